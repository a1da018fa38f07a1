"""Test-side torchrun entry point: trains like ``-m sb_train`` but one rank dies mid-run on the first attempt.

``torchrun ... elastic_worker.py KILL_RANK KILL_AFTER_STEP ARGS...`` runs ``sb_train.cli.main(ARGS)`` with a
callback that ends rank KILL_RANK with ``os._exit(KILLED_EXIT_CODE)`` (no cleanup, no checkpoint: like a
killed process) right after the update of step KILL_AFTER_STEP, but only while torchrun's
``TORCHELASTIC_RESTART_COUNT`` is 0, so the group that torchrun restarts trains to the end.
"""

from __future__ import annotations

import os
import sys

from sb_train.callbacks import TrainerCallback
from sb_train.cli import main

KILLED_EXIT_CODE = 19


class KillOneRankOnFirstAttempt(TrainerCallback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step
        self.first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def on_step_end(self, trainer, step: int) -> None:
        if self.first_attempt and step == self.step and trainer.env.rank == self.rank:
            print(f"[elastic_worker] rank {self.rank} dies after step {step}", flush=True)
            os._exit(KILLED_EXIT_CODE)


if __name__ == "__main__":
    kill_rank, kill_step = int(sys.argv[1]), int(sys.argv[2])
    raise SystemExit(main(sys.argv[3:], callbacks=[KillOneRankOnFirstAttempt(kill_rank, kill_step)]))
