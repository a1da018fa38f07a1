"""Router-only gradient clipping with AutoClip (docs/design/optimizer.md), kept on the device.

Each optimizer step, after the gradients are reduced, :meth:`RouterClip.clip_` measures the L2 norm
over all router gradients, scales them by ``min(1, clip / (norm + 1e-6))`` (exactly what
``torch.nn.utils.clip_grad_norm_`` does at the same threshold), and records the norm. Once ``window`` norms
are recorded, the threshold for the *next* step becomes ``max(quantile(history, q), floor)`` (linear
interpolation), recomputed every step from the last ``window`` norms.

Where we differ from the reference on purpose:

* No host syncs: the norm, threshold and history are device tensors, and the scaling happens even when the
  factor is 1 (no branching on tensor values). Only the ring-buffer position and fill count live on the host,
  because the host knows when a step had router gradients. The reference called ``float(...)`` on the norm
  and rebuilt a CPU tensor from a deque every step.
* A step whose router gradients are all ``None`` (the single-expert phase, where the router does not run)
  is neither clipped nor recorded (docs/design/deviations.md D4). The reference appended a norm of 0.0 for
  those steps, which drove the 10th percentile to 0 and the clip to 1e-6 for about 50 steps (record steps
  250-299).
* A non-finite norm is recorded as NaN and ignored by the quantile (``nanquantile``); the reference let a NaN
  into its quantile. (Its gradients still become non-finite, as with ``clip_grad_norm_``; the trainer's abort
  checks handle that.)
* The history, counters and threshold are part of :meth:`state_dict`, so a resumed run clips identically
  (docs/design/deviations.md D24).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClipResult", "RouterClip"]

_EPS = 1e-6  # added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does


@dataclass(frozen=True)
class ClipResult:
    """One step's clip, as () float32 device tensors (read them on the host only when logging)."""

    norm: Tensor  # pre-clip L2 norm over all router gradients
    clip: Tensor  # threshold in force this step; NaN when none
    clipped: Tensor  # 1.0 when the gradients were scaled down, else 0.0


def _total_norm(grads: list[Tensor]) -> Tensor:
    """float32 L2 norm over all tensors (per-tensor norms with one foreach kernel, then their norm)."""
    try:
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    except TypeError:  # older torch without the dtype argument
        norms = [n.float() for n in torch._foreach_norm(grads, 2)]
    return torch.linalg.vector_norm(torch.stack(norms), 2)


def _clip_and_record(
    grads: list[Tensor],
    history: Tensor,
    threshold: Tensor,
    position: int,
    apply_clip: bool,
    update_threshold: bool,
    quantile: float,
    floor: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The device part of one step: returns (norm, clip used, clipped, next threshold) and writes the norm
    into ``history[position]``. Only host values (``position``, the two flags) steer the control flow."""
    norm = _total_norm(grads)
    if apply_clip:
        # threshold * 1/(norm + eps): the same rounding as clip_grad_norm_'s `max_norm / (norm + eps)`
        coef = (threshold * torch.reciprocal(norm + _EPS)).clamp(max=1.0)
        torch._foreach_mul_(grads, coef)
        clipped = (coef < 1.0).float()
        clip_used = torch.where(torch.isinf(threshold), torch.full_like(threshold, math.nan), threshold)
    else:
        clipped = torch.zeros_like(norm)
        clip_used = torch.full_like(norm, math.nan)
    history[position] = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, math.nan))
    next_threshold = threshold
    if update_threshold:
        q = torch.nanquantile(history, quantile, interpolation="linear")
        next_threshold = torch.where(torch.isnan(q), threshold, q.clamp(min=floor))
    return norm, clip_used, clipped, next_threshold


class RouterClip:
    """Router-only gradient clipping: a fixed clip (``base_clip > 0``), AutoClip (``auto=True``: the
    ``quantile`` of the last ``window`` router grad norms, at least ``floor``), both (the fixed clip holds
    until AutoClip has a full window), or neither (the norm is only measured).

    >>> clip = RouterClip(device="cuda")          # record settings: AutoClip, window 250, q = 0.10
    >>> result = clip.clip_(router_params)           # after the all-reduce, before optimizer.step()
    >>> if result is not None and log_now: print(result.norm.item(), result.clip.item())
    """

    def __init__(
        self,
        *,
        window: int = 250,
        quantile: float = 0.10,
        floor: float = 1e-6,
        base_clip: float | None = None,
        auto: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 (got {window}); the record uses 250")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1] (got {quantile}); the record uses 0.10")
        if not (math.isfinite(floor) and floor >= 0.0):
            raise ValueError(f"floor must be a finite number >= 0 (got {floor})")
        if base_clip is not None and not math.isfinite(base_clip):
            raise ValueError(f"base_clip must be finite, or None / <= 0 for no fixed clip (got {base_clip})")
        self.window = int(window)
        self.quantile = float(quantile)
        self.floor = float(floor)
        self.base_clip = float(base_clip) if base_clip is not None and base_clip > 0 else None
        self.auto = bool(auto)
        device = torch.device("cpu" if device is None else device)
        self._history = torch.full((self.window,), math.nan, dtype=torch.float32, device=device)
        self._threshold = torch.tensor(
            math.inf if self.base_clip is None else self.base_clip, dtype=torch.float32, device=device
        )
        self._position = 0  # next history slot
        self._filled = 0  # norms recorded, capped at window
        self._clip_in_force = self.base_clip is not None

    @property
    def device(self) -> torch.device:
        return self._history.device

    @property
    def clip_in_force(self) -> bool:
        """Whether the next :meth:`clip_` scales gradients (known on the host, no sync)."""
        return self._clip_in_force

    @property
    def num_recorded(self) -> int:
        """Norms in the history (at most ``window``)."""
        return self._filled

    @property
    def threshold(self) -> Tensor:
        """() float32 device tensor: the clip the next step uses; NaN when none."""
        if not self._clip_in_force:
            return torch.full_like(self._threshold, math.nan)
        return self._threshold.clone()

    def to(self, device: torch.device | str) -> RouterClip:
        self._history = self._history.to(device)
        self._threshold = self._threshold.to(device)
        return self

    @torch.no_grad()
    def clip_(self, params: Iterable[Tensor], *, routed: bool = True) -> ClipResult | None:
        """Clip the router gradients of ``params`` in place and record their norm.

        Returns None, and records nothing, when every gradient is None or ``routed`` is False (pass False
        for a step on which the router did not run, if the gradient reduction installs zero gradients)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not routed or not grads:
            return None
        if grads[0].device != self.device:
            self.to(grads[0].device)
        update = self.auto and self._filled + 1 >= self.window
        norm, clip_used, clipped, next_threshold = _clip_and_record(
            grads, self._history, self._threshold, self._position, self._clip_in_force, update,
            self.quantile, self.floor,
        )
        self._threshold = next_threshold
        self._position = (self._position + 1) % self.window
        self._filled = min(self._filled + 1, self.window)
        self._clip_in_force = self._clip_in_force or update
        return ClipResult(norm=norm, clip=clip_used, clipped=clipped)

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "quantile": self.quantile,
            "floor": self.floor,
            "base_clip": self.base_clip,
            "auto": self.auto,
            "history": self._history.detach().cpu().clone(),
            "threshold": self._threshold.detach().cpu().clone(),
            "position": self._position,
            "filled": self._filled,
            "clip_in_force": self._clip_in_force,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore history, counters and threshold (the settings given to the constructor stay in force)."""
        history = state["history"]
        if int(state["window"]) != self.window or tuple(history.shape) != (self.window,):
            raise ValueError(
                f"the checkpoint's router AutoClip window is {state['window']} but this run uses "
                f"{self.window}; resume with the same window"
            )
        self._history = history.to(device=self.device, dtype=torch.float32).clone()
        self._threshold = state["threshold"].to(device=self.device, dtype=torch.float32).clone()
        self._position = int(state["position"]) % self.window
        self._filled = min(int(state["filled"]), self.window)
        self._clip_in_force = bool(state["clip_in_force"])
