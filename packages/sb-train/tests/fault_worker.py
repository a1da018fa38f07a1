"""Test-side entry point that trains like ``python -m sb_train`` but dies right after a chosen step.

``python fault_worker.py KILL_AFTER_STEP ARGS...`` installs a callback that ends the process with
``os._exit(17)`` (no cleanup, no checkpoint: like a killed process) after the update of that step, on every
rank, then runs ``sb_train.cli.main(ARGS)``.
"""

from __future__ import annotations

import os
import sys

from sb_train.callbacks import TrainerCallback
from sb_train.cli import main

KILLED_EXIT_CODE = 17


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step: int) -> None:
        if step == self.step:
            os._exit(KILLED_EXIT_CODE)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[2:], callbacks=[KillAfterStep(int(sys.argv[1]))]))
