"""How close the router's logits ran to the logit cap over a run, accumulated on the device.

The statistics are those of docs/log-format.md ("Logit stats").

Each training step with a cap (cap > 0) and a finite ``max_logit`` (the step's router summary: the mean
over layers of the per-layer maximum logit) adds ``ratio = clamp(max_logit / cap, 0, 1.5)``: a step count,
the sum of ratios, a hit when ``ratio >= 0.98``, and the running maximum. :meth:`LogitStats.summary` turns
them into the reference's final keys::

    logit_cap_steps       count
    logit_cap_hit_rate    hits / count
    logit_cap_ratio_mean  sum / count
    logit_cap_ratio_max   max ratio
    logit_headroom_mean   1 - mean
    logit_score           clamp(0.7 (1 - hit_rate) + 0.3 clamp(1 - |mean - 0.85| / 0.85, 0, 1), 0, 1)

With no counted step every key is NaN except ``logit_cap_steps = 0``.

Where we differ from the reference on purpose: ``update`` takes the device tensor and masks a non-finite value
instead of reading it on the host (no sync per step; ``summary`` makes one host copy), the thresholds are
arguments (docs/design/deviations.md D21), and the state is checkpointed (docs/design/deviations.md D24).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["LogitStats"]

_COUNT, _SUM, _HITS, _MAX = range(4)


class LogitStats:
    """Device-side accumulator of max_logit / cap ratios (see the module docstring)."""

    def __init__(
        self,
        *,
        hit_ratio: float = 0.98,
        target_ratio: float = 0.85,
        max_ratio: float = 1.5,
        device: torch.device | str | None = None,
    ) -> None:
        if not target_ratio > 0.0:
            raise ValueError(f"target_ratio must be > 0 (got {target_ratio}); the reference uses 0.85")
        if not 0.0 < hit_ratio <= max_ratio:
            raise ValueError(f"need 0 < hit_ratio <= max_ratio (got {hit_ratio}, {max_ratio})")
        self.hit_ratio = float(hit_ratio)
        self.target_ratio = float(target_ratio)
        self.max_ratio = float(max_ratio)
        # count, sum of ratios, hits, max ratio (float64, like the reference's Python floats)
        self._acc = torch.zeros(4, dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device:
        return self._acc.device

    @torch.no_grad()
    def update(self, max_logit: Tensor | float, cap: float) -> None:
        """Count one step. ``cap <= 0`` (or NaN) means no cap: nothing is counted. A non-finite ``max_logit``
        (one-element tensor or float) is skipped on the device, without a host sync."""
        if not cap > 0.0 or not math.isfinite(cap):
            return
        m = torch.as_tensor(max_logit)
        if m.device != self.device:
            if m.device.type == "cpu":
                m = m.to(self.device)  # a host value: a host-to-device copy, no sync
            else:
                self._acc = self._acc.to(m.device)  # follow the model's device
        m = m.reshape(()).to(torch.float64)
        valid = torch.isfinite(m)
        ratio = torch.where(valid, (m / cap).clamp(0.0, self.max_ratio), torch.zeros_like(m))
        weight = valid.to(torch.float64)
        self._acc[:3] += torch.stack((weight, ratio, (ratio >= self.hit_ratio).to(torch.float64) * weight))
        self._acc[_MAX] = torch.maximum(self._acc[_MAX], ratio)  # ratio >= 0, and 0 when skipped

    def summary(self) -> dict[str, float]:
        """The final keys (one device-to-host copy)."""
        count, total, hits, max_ratio = self._acc.tolist()
        if count <= 0:
            nan = math.nan
            return {
                "logit_cap_steps": 0.0,
                "logit_cap_hit_rate": nan,
                "logit_cap_ratio_mean": nan,
                "logit_cap_ratio_max": nan,
                "logit_headroom_mean": nan,
                "logit_score": nan,
            }
        hit_rate = hits / count
        mean = total / count
        ratio_score = min(max(1.0 - abs(mean - self.target_ratio) / self.target_ratio, 0.0), 1.0)
        return {
            "logit_cap_steps": float(count),
            "logit_cap_hit_rate": hit_rate,
            "logit_cap_ratio_mean": mean,
            "logit_cap_ratio_max": max_ratio,
            "logit_headroom_mean": 1.0 - mean,
            "logit_score": min(max(0.7 * (1.0 - hit_rate) + 0.3 * ratio_score, 0.0), 1.0),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"acc": self._acc.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        acc = state["acc"]
        if tuple(acc.shape) != (4,):
            raise ValueError(f"logit stats state must hold 4 values (got shape {tuple(acc.shape)})")
        self._acc = acc.to(device=self.device, dtype=torch.float64).clone()
