"""Checking and translating optimizer options, torch.optim.Muon's names and values included."""

from __future__ import annotations

import math
from typing import Any

import torch

from .orthogonalize import DEFAULT_METHOD, resolve_method
from .scaling import lr_scale_from_adjust_lr_fn, validate_lr_scale


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_lr(lr: Any, who: str) -> float | torch.Tensor:
    """A valid learning rate: a finite number >= 0, or a 1-element tensor holding one.

    A 1-element tensor comes back as a 0-d view of itself, so the update reads it as a scalar and
    in-place changes (``group["lr"].fill_(...)``, as torch's LR schedulers do) still reach it.
    """
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element; {who} got a tensor lr of shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise ValueError(f"{who} lr must be a floating-point tensor, got dtype {lr.dtype}")
        value = float(lr)  # construction time, not the step: one read is fine
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{who} lr must be finite and >= 0; the tensor lr holds {value}")
        return lr.view(())
    if not (number(lr) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{who} lr must be a finite number >= 0 or a 1-element tensor, got {lr!r}")
    return lr


def translate_torch_names(group: dict[str, Any]) -> None:
    """Rename torch.optim.Muon's group keys in place: ns_coefficients -> method, adjust_lr_fn -> lr_scale.

    None for either means "not given" (torch's adjust_lr_fn=None is "original", our default too).
    """
    coefficients = group.pop("ns_coefficients", None)
    if coefficients is not None:
        if group.get("method") is not None:
            raise ValueError("pass either ns_coefficients (torch.optim.Muon's name) or method, not both")
        group["method"] = tuple(coefficients)
    if "adjust_lr_fn" in group:
        adjust = group.pop("adjust_lr_fn")
        scale = lr_scale_from_adjust_lr_fn(adjust)  # validates, None included
        if adjust is not None and group.get("lr_scale") is not None:
            raise ValueError("pass either adjust_lr_fn (torch.optim.Muon's name) or lr_scale, not both")
        if group.get("lr_scale") is None:
            group["lr_scale"] = scale


def check_muon_options(group: dict[str, Any]) -> None:
    """Validate (and canonicalize in place) a Muon group's numeric and method options."""
    group["lr"] = check_lr(group["lr"], "Muon")
    mom, wd, steps, eps = group["momentum"], group["weight_decay"], group["ns_steps"], group["eps"]
    if not (number(mom) and 0.0 <= mom < 1.0):
        raise ValueError(f"Muon momentum must be in [0, 1), got {mom!r}")
    if not (number(wd) and math.isfinite(wd) and wd >= 0):
        raise ValueError(f"Muon weight_decay must be a finite number >= 0, got {wd!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps < 100):
        raise ValueError(f"Muon ns_steps must be an integer in [0, 100), got {steps!r}")
    if not (number(eps) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"Muon eps must be a finite number >= 0, got {eps!r}")
    if group["method"] is None:
        group["method"] = DEFAULT_METHOD
    group["method"] = resolve_method(group["method"])
    if group["lr_scale"] is None:
        group["lr_scale"] = "original"
    validate_lr_scale(group["lr_scale"])
    dtype = group["compute_dtype"]
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"Muon compute_dtype must be a floating-point torch.dtype or None, got {dtype!r}")


def check_adamw_options(group: dict[str, Any]) -> None:
    """Validate (and canonicalize in place) an AdamW group's options."""
    group["lr"] = check_lr(group["lr"], "AdamW")
    betas, eps, wd = group["betas"], group["eps"], group["weight_decay"]
    if not (len(betas) == 2 and all(number(b) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"AdamW betas must be two numbers in [0, 1), got {betas!r}")
    group["betas"] = tuple(betas)
    if not (number(eps) and eps >= 0):
        raise ValueError(f"AdamW eps must be a number >= 0, got {eps!r}")
    if not (number(wd) and math.isfinite(wd) and wd >= 0):
        raise ValueError(f"AdamW weight_decay must be a finite number >= 0, got {wd!r}")
