"""Idle slices: which matrices of a parameter got no gradient this step, decided on the device.

A stacked parameter (MoE experts (E, rows, cols)) holds one matrix per slice. When an expert gets no tokens,
its slice of the gradient is exactly zero; an optimizer over one parameter per expert would see no gradient
and leave that expert alone. With ``skip_idle_slices=True`` Muon does the same for each slice: no update, no
weight decay, no momentum change (docs/design/optimizer.md, Idle experts).
"""

from __future__ import annotations

from typing import Any

import torch


def active_slices(grad: torch.Tensor, stacked: bool) -> torch.Tensor:
    """Bool mask, broadcastable to ``grad``, of the matrices with at least one non-zero gradient entry.

    A slice is one matrix that Muon orthogonalizes on its own: each (rows, cols) slice of a stacked
    parameter, or the whole of any other parameter. A NaN entry counts as non-zero. No host sync.
    """
    nonzero = grad.ne(0)
    if stacked and grad.ndim > 2:
        return nonzero.flatten(-2).any(dim=-1)[..., None, None]
    return nonzero.any().reshape((1,) * grad.ndim)


def validate_skip_idle(group: dict[str, Any]) -> None:
    """Check a group's ``skip_idle_slices`` option."""
    if not isinstance(group["skip_idle_slices"], bool):
        raise ValueError(f"skip_idle_slices must be True or False, got {group['skip_idle_slices']!r}")
