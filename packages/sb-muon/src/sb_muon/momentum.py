"""Momentum warmup: ramp Muon's momentum from a lower start value over the first steps."""

from __future__ import annotations

import torch


def momentum_warmup(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Linear ramp: `start` at step 0, `end` from `warmup_steps` on.

    The defaults are the speedrun baseline's (docs/design/schedules.md, Momentum warmup)."""
    if warmup_steps <= 0:
        return end
    frac = min(max(step, 0) / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


class MomentumWarmup:
    """Sets the momentum of every Muon param group each step, like an LR scheduler.

    >>> warmup = MomentumWarmup(opt, warmup_steps=300, start=0.85)
    >>> for step in range(n):  ...; opt.step(); warmup.step()

    `end` defaults to each group's momentum at construction time. AdamW groups of
    :class:`sb_muon.MuonAdamW` are left alone.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 300, start: float = 0.85,
                 end: float | None = None) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"start momentum must be in [0, 1), got {start}")
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.start = start
        self.last_step = 0
        self._groups = [g for g in optimizer.param_groups if g.get("use_muon", True) and "momentum" in g]
        self.ends = [g["momentum"] if end is None else end for g in self._groups]
        self._apply()

    def _apply(self) -> None:
        for group, end in zip(self._groups, self.ends, strict=True):
            group["momentum"] = momentum_warmup(self.last_step, self.warmup_steps, self.start, end)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "ends": list(self.ends)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.ends = list(state["ends"])
        self._apply()
