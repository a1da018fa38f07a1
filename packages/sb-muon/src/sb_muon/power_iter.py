"""The start vector of TurboMuon's σ_max power iteration: constant, or random and reproducible.

``power_iter_start="random"`` draws each parameter's start vector from a generator seeded with
(power_iter_seed, the parameter's index in the optimizer, the parameter's step count). No generator state
has to be saved: the step count lives in the parameter's optimizer state, so a resumed run draws the same
vectors, and the draw does not depend on which rank computes the update (docs/design/optimizer.md,
TurboMuon).
"""

from __future__ import annotations

from typing import Any

import torch

POWER_ITER_STARTS = ("constant", "random")
_MASK = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing: nearby inputs give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for x in parts:
        h = ((h ^ (x & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 29
    return h >> 1


def power_iter_generator(group: dict[str, Any], state: dict[str, Any], index: int,
                         device: torch.device) -> torch.Generator | None:
    """The generator of one parameter's random start this step, or None for the constant start.

    Advances the parameter's ``power_iter_step`` count in ``state``. Host-only work (no device sync).
    """
    if group["method"] != "turbo" or group.get("power_iter_start", "constant") != "random":
        return None
    step = state.get("power_iter_step", 0)
    state["power_iter_step"] = step + 1
    generator = torch.Generator(device=device)
    generator.manual_seed(mix_seed(group.get("power_iter_seed", 0), index, step))
    return generator


def validate_power_iter(group: dict[str, Any]) -> None:
    """Check a group's ``power_iter_start`` and ``power_iter_seed`` options."""
    if group["power_iter_start"] not in POWER_ITER_STARTS:
        raise ValueError(f"power_iter_start must be one of {POWER_ITER_STARTS}, "
                         f"got {group['power_iter_start']!r}")
    seed = group["power_iter_seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"power_iter_seed must be an integer, got {seed!r}")
