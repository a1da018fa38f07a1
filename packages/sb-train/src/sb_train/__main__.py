"""`python -m sb_train` (and `torchrun -m sb_train`) runs the sb-train command line."""

from sb_train.cli import main

raise SystemExit(main())
