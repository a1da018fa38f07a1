"""One run of a sweep in a child process: ``python -m sb_train.sweep_worker --tag JSON -- SB_TRAIN_ARGS``.

``sb-train sweep --nproc N`` starts it under torchrun (sb_train.sweep_runner), so that the run's run.json
gets its ``sweep`` entry (id, variant, seed) as an in-process run's does; everything else is ``sb-train``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from sb_train.cli import main as train_main
from sb_train.sweep_runner import SweepTag


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "--tag" or args[2] != "--":
        print("usage: python -m sb_train.sweep_worker --tag JSON -- SB_TRAIN_ARGS (sb-train sweep starts "
              "it)", file=sys.stderr)
        return 2
    tag = json.loads(args[1])
    return train_main(args[3:], callbacks=[SweepTag(str(tag["id"]), str(tag["variant"]), int(tag["seed"]))])


if __name__ == "__main__":
    raise SystemExit(main())
