"""How the orthogonalized update is scaled by the shape of the matrix it updates.

An orthogonalized matrix has all singular values near 1, so its RMS entry is about
1/sqrt(max(rows, cols)). Each rule multiplies the learning rate by a shape factor:

| name              | factor                      | used by                                  |
|-------------------|-----------------------------|------------------------------------------|
| "original"        | sqrt(max(1, rows / cols))   | Keller's Muon, torch.optim.Muon default  |
| "match_rms_adamw" | 0.2 * sqrt(max(rows, cols)) | Moonlight; update RMS ≈ AdamW's (≈ 0.2)  |
| "spectral"        | sqrt(rows / cols)           | spectral-norm scaling (Dion); torch's    |
|                   |                             | name for it: "spectral_unclamped"        |
| "none"            | 1                           |                                          |

rows = the output dimension (first dim), cols = the product of the remaining dims (or, for
stacked matrices, the last two dims of each slice).

torch.optim.Muon's ``adjust_lr_fn`` values map onto these names with the same meaning:
None and "original" -> "original", "match_rms_adamw", "spectral_unclamped" -> "spectral".
"""

from __future__ import annotations

import math
from collections.abc import Callable

LrScale = str | float | Callable[[int, int], float]

_RULES: dict[str, Callable[[int, int], float]] = {
    "original": lambda rows, cols: math.sqrt(max(1.0, rows / cols)),
    "match_rms_adamw": lambda rows, cols: 0.2 * math.sqrt(max(rows, cols)),
    "spectral": lambda rows, cols: math.sqrt(rows / cols),
    "spectral_unclamped": lambda rows, cols: math.sqrt(rows / cols),
    "none": lambda rows, cols: 1.0,
}

LR_SCALES = tuple(_RULES)
#: torch.optim.Muon's ``adjust_lr_fn`` values and the ``lr_scale`` each one means.
ADJUST_LR_FNS: dict[str | None, str] = {
    None: "original", "original": "original", "match_rms_adamw": "match_rms_adamw",
    "spectral_unclamped": "spectral_unclamped",
}


def lr_scale_from_adjust_lr_fn(adjust_lr_fn: str | None) -> str:
    """The ``lr_scale`` that means what torch.optim.Muon's ``adjust_lr_fn`` means."""
    if not isinstance(adjust_lr_fn, (str, type(None))) or adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported: adjust_lr_fn "
                         f"takes {list(ADJUST_LR_FNS)} (or use lr_scale, which also takes {LR_SCALES}, "
                         "a float or a callable(rows, cols))")
    return ADJUST_LR_FNS[adjust_lr_fn]


def validate_lr_scale(rule: LrScale) -> None:
    if isinstance(rule, str):
        if rule not in _RULES:
            raise ValueError(f"unknown lr_scale {rule!r}; choose one of {LR_SCALES}, a float or a callable")
    elif isinstance(rule, (int, float)):
        if not math.isfinite(rule) or rule <= 0:
            raise ValueError(f"a numeric lr_scale must be a positive finite number, got {rule}")
    elif not callable(rule):
        raise TypeError(f"lr_scale must be a name, a number or a callable(rows, cols), got {type(rule)}")


def lr_scale_factor(rule: LrScale, rows: int, cols: int) -> float:
    """The multiplier applied to the learning rate for a (rows, cols) matrix."""
    if isinstance(rule, str):
        return _RULES[rule](rows, cols)
    if isinstance(rule, (int, float)):
        return float(rule)
    return float(rule(rows, cols))
