"""Hooks into the training loop: subclass :class:`TrainerCallback`, pass ``Trainer(callbacks=[...])``.

The loop calls each hook of every callback in the order given. Hooks run on every rank; a hook must not
change the training state unless it means to (tests use ``on_step_end`` to kill a process at a chosen step,
the way an out-of-memory kill or a lost node would).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sb_train.trainer import Trainer

__all__ = ["TrainerCallback"]


class TrainerCallback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up, resume and the untimed warm-up, before the first step of this process."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After the optimizer update of ``step`` (before its log row and any stop check)."""

    def on_train_end(self, trainer: Trainer, state: str) -> None:
        """After the loop ended with ``state`` (finished, stopped or aborted) and the logs were closed."""
