"""The optimizer: one :class:`sb_muon.MuonAdamW` over the named groups of :mod:`sb_train.param_groups`.

Each group records its ``initial_lr``; the trainer sets ``lr = initial_lr × schedule multiplier`` for every
group every step — Muon groups included, which the reference never did (docs/design/deviations.md D2).
The expert group skips idle experts (no tokens in the step: an all-zero gradient slice), as the reference's
per-expert parameters without a gradient were skipped. See docs/design/optimizer.md.
"""

from __future__ import annotations

import torch
from torch import nn

from sb_muon import MuonAdamW, compute_choice
from sb_train.config import OptimConfig
from sb_train.param_groups import (
    ADAM_GROUPS,
    ADAPTER,
    ATTN,
    EMBED,
    HEAD,
    MUON_GROUPS,
    ROUTER,
    SCALAR,
    SHARED_FFN,
    group_of,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def muon_compute_dtype(cfg: OptimConfig, device: str | torch.device,
                       capability: tuple[int, int] | None = None) -> torch.dtype:
    """The dtype of the Muon products on ``device``: the configured one, or on "auto" sb-muon's default for
    the device (``capability``: a CUDA device's compute capability, stated instead of asked)."""
    if cfg.muon_compute_dtype in _DTYPES:
        return _DTYPES[cfg.muon_compute_dtype]
    return compute_choice(torch.device(device), capability).dtype


def build_optimizer(model: nn.Module, cfg: OptimConfig, seed: int = 0,
                    compute_dtype: torch.dtype | None = None) -> MuonAdamW:
    """Every trainable parameter in exactly one group (checked), groups in the reference's order; ``seed``
    seeds the power iteration's random start (with each parameter's index and step count). The trainer
    passes its device plan's ``compute_dtype`` (:mod:`sb_train.device_plan`); None follows the config."""
    named: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in (*ADAM_GROUPS, *MUON_GROUPS)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            named[group_of(name)].append((name, p))
    lrs = {
        EMBED: cfg.lr_embed,
        SCALAR: cfg.lr_scalar,
        ROUTER: cfg.lr_router,
        ADAPTER: cfg.lr_adapter,
        HEAD: cfg.lr_head,
        ATTN: cfg.lr_muon,
        SHARED_FFN: cfg.lr_muon,
    }
    groups = []
    for name, params in named.items():
        if not params:
            continue
        group = {"params": params, "name": name, "lr": lrs[name], "initial_lr": lrs[name]}
        if name in MUON_GROUPS:
            group.update(use_muon=True, stacked=True, weight_decay=cfg.weight_decay,
                         skip_idle_slices=cfg.muon_skip_idle_experts and name == SHARED_FFN)
        else:
            group.update(use_muon=False, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                         weight_decay=cfg.weight_decay)
        groups.append(group)
    opt = MuonAdamW(
        groups,
        lr=cfg.lr_muon,
        momentum=0.95,  # the trainer overwrites it each step with the schedule's momentum
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        method=cfg.muon_method,
        # None ("auto" and no plan): sb-muon decides per device
        compute_dtype=compute_dtype if compute_dtype is not None else _DTYPES.get(cfg.muon_compute_dtype),
        power_iter_start=cfg.muon_power_iter_start,
        power_iter_seed=seed,
        nonfinite="ignore",  # the trainer checks the loss instead (no extra host sync per step)
    )
    counted = sum(len(g["params"]) for g in opt.param_groups)
    total = sum(1 for p in model.parameters() if p.requires_grad)
    if counted != total:
        raise RuntimeError(f"optimizer groups hold {counted} parameters, the model has {total}")
    return opt
