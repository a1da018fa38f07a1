"""The optimizer's parameter groups: their names (defined here once) and which group each parameter joins.

Adam groups: ``embed`` (token + value embeddings), ``scalar``, ``router``, ``adapter``, ``head``.
Muon groups: ``attn`` (the fused (4, d, d) q/k/v/out weights, one matrix per slice) and ``shared_ffn`` (the
stacked expert W1 / W2, one matrix per expert, also for the per-layer MoE baseline, whose experts of every
layer are stacked in the same two tensors; a dense-FFN baseline's matrices join it too). See
docs/design/optimizer.md and docs/design/model.md (per-layer MoE baseline).
"""

from __future__ import annotations

__all__ = [
    "ADAM_GROUPS",
    "ADAPTER",
    "ATTN",
    "EMBED",
    "HEAD",
    "MUON_GROUPS",
    "ROUTER",
    "SCALAR",
    "SHARED_FFN",
    "group_of",
]

EMBED = "embed"
SCALAR = "scalar"
ROUTER = "router"
ADAPTER = "adapter"
HEAD = "head"
ATTN = "attn"
SHARED_FFN = "shared_ffn"

#: Group order of the optimizer (the reference's): Adam groups first, then the Muon groups.
ADAM_GROUPS: tuple[str, ...] = (EMBED, SCALAR, ROUTER, ADAPTER, HEAD)
MUON_GROUPS: tuple[str, ...] = (ATTN, SHARED_FFN)


def group_of(name: str) -> str:
    """The optimizer group of a parameter, from its name in ``GPT.named_parameters()``."""
    if name.startswith(("embed.", "value_embeds.")):
        return EMBED
    if name == "scalars":
        return SCALAR
    if name in ("bank.router_w", "bank.router_b"):
        return ROUTER
    if name in ("bank.adapter_scale", "bank.adapter_bias"):
        return ADAPTER
    if name == "lm_head":
        return HEAD
    if name.endswith("attn.qkvo_w"):
        return ATTN
    if name in ("bank.w1", "bank.w2") or ".dense_ffn." in name:
        return SHARED_FFN
    raise ValueError(f"parameter {name!r} has no optimizer group; add it to sb_train.param_groups.group_of")
