"""The optimizer: one :class:`sb_muon.MuonAdamW` with the reference's seven named groups (spec 3.1).

Adam groups: ``embed`` (token + value embeddings), ``scalar``, ``router``, ``adapter``, ``head``.
Muon groups: ``attn`` (the fused (4, d, d) q/k/v/out weights, one matrix per slice) and ``shared_ffn`` (the
stacked expert W1 / W2, one matrix per expert; a dense-FFN baseline's matrices go here too).

Each group records its ``initial_lr``; the trainer sets ``lr = initial_lr × schedule multiplier`` for every
group every step — Muon groups included, which the reference never did (spec 7.2).
"""

from __future__ import annotations

from torch import nn

from sb_muon import MuonAdamW
from sb_train.config import OptimConfig

ADAM_GROUPS = ("embed", "scalar", "router", "adapter", "head")
MUON_GROUPS = ("attn", "shared_ffn")


def group_of(name: str) -> str:
    """The optimizer group of a parameter, from its name in ``GPT.named_parameters()``."""
    if name.startswith(("embed.", "value_embeds.")):
        return "embed"
    if name == "scalars":
        return "scalar"
    if name in ("bank.router_w", "bank.router_b"):
        return "router"
    if name in ("bank.adapter_scale", "bank.adapter_bias"):
        return "adapter"
    if name == "lm_head":
        return "head"
    if name.endswith("attn.qkvo_w"):
        return "attn"
    if name in ("bank.w1", "bank.w2") or ".dense_ffn." in name:
        return "shared_ffn"
    raise ValueError(f"parameter {name!r} has no optimizer group; add it to sb_train.optimizer.group_of")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> MuonAdamW:
    """Every trainable parameter in exactly one group (checked), groups in the reference's order."""
    named: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in (*ADAM_GROUPS, *MUON_GROUPS)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            named[group_of(name)].append((name, p))
    lrs = {
        "embed": cfg.lr_embed,
        "scalar": cfg.lr_scalar,
        "router": cfg.lr_router,
        "adapter": cfg.lr_adapter,
        "head": cfg.lr_head,
        "attn": cfg.lr_muon,
        "shared_ffn": cfg.lr_muon,
    }
    groups = []
    for name, params in named.items():
        if not params:
            continue
        group = {"params": params, "name": name, "lr": lrs[name], "initial_lr": lrs[name]}
        if name in MUON_GROUPS:
            group.update(use_muon=True, stacked=True, weight_decay=cfg.weight_decay)
        else:
            group.update(use_muon=False, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                         weight_decay=cfg.weight_decay)
        groups.append(group)
    opt = MuonAdamW(
        groups,
        lr=cfg.lr_muon,
        momentum=0.95,
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        method=cfg.muon_method,
        nonfinite="ignore",  # the trainer checks the loss instead (no extra host sync per step)
    )
    counted = sum(len(g["params"]) for g in opt.param_groups)
    total = sum(1 for p in model.parameters() if p.requires_grad)
    if counted != total:
        raise RuntimeError(f"optimizer groups hold {counted} parameters, the model has {total}")
    return opt
