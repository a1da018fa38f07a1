"""``python -m sb_data`` is the ``sb-data`` command."""

import sys

from sb_data.cli import main

sys.exit(main())
