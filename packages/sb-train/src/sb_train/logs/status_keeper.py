"""What status.json says between writes: the last step, the best and final validation, and when it is due.

status.json is rewritten after every validation and at least every ``every`` steps (docs/log-format.md §6).
On resume the best validation of the earlier segment is kept if it was measured at or before the resumed
step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

STATUS_EVERY = 50


class StatusKeeper:
    """The status fields the logger fills in (``final_val_loss``, ``best_val_loss``, ``best_val_step``)."""

    def __init__(self, total_steps: int, every: int = STATUS_EVERY) -> None:
        self.total_steps = total_steps
        self.every = every
        self.last_step: int | None = None
        self.last_time_ms = 0.0
        self.best_val: tuple[float, int] | None = None
        self.final_val_loss: float | None = None
        self.written_step: int | None = None
        self.last_extra: dict[str, Any] = {}

    def resume(self, step: int, time_ms: float, previous: Mapping[str, Any]) -> None:
        """Continue after step ``step``; ``previous`` is the earlier segment's status.json (may be empty)."""
        self.last_step, self.last_time_ms = step, time_ms
        loss, at = previous.get("best_val_loss"), previous.get("best_val_step")
        if isinstance(loss, int | float) and isinstance(at, int) and at <= step:
            self.best_val = (float(loss), at)

    def record(self, step: int, time_ms: float, val_loss: float | None) -> bool:
        """Note a logged step; True when status.json is due (a validation, or ``every`` steps passed)."""
        self.last_step, self.last_time_ms = step, time_ms
        if val_loss is not None and not math.isnan(val_loss):
            if self.best_val is None or val_loss < self.best_val[0]:
                self.best_val = (float(val_loss), step)
            if step >= self.total_steps:
                self.final_val_loss = float(val_loss)
        return val_loss is not None or self.written_step is None or step - self.written_step >= self.every

    def fields(self) -> dict[str, Any]:
        """The §6 keys this keeper knows (the caller's extras override them)."""
        return {
            "final_val_loss": self.final_val_loss,
            "best_val_loss": self.best_val[0] if self.best_val else None,
            "best_val_step": self.best_val[1] if self.best_val else None,
            "abort_reason": None,
            "error": None,
        }

    def written(self, step: int, extra: Mapping[str, Any]) -> None:
        self.written_step = step
        self.last_extra = dict(extra)
