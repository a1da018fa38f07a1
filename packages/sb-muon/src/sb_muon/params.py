"""Deciding which parameters Muon may update.

Muon orthogonalizes matrices. It must not update 0-D/1-D parameters (biases, norms, scalars),
and it should not update embeddings or output heads: their rows are looked up or read out one
token at a time, so an orthogonalized whole-matrix step is the wrong geometry for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

# A parameter whose dotted name has a part like these is treated as an embedding or a head.
_EMBED_OR_HEAD = re.compile(r"(embed|^wte$|^wpe$|^lm_head$|^head$|^output_head$|^classifier$)")


def looks_like_embedding_or_head(name: str) -> bool:
    """True when a dotted parameter name names an embedding table or an output head."""
    return any(_EMBED_OR_HEAD.search(part) for part in name.split(".")[:-1] or name.split("."))


def describe(name: str | None, index: int, p: torch.Tensor) -> str:
    label = name if name is not None else f"parameter #{index}"
    return f"{label} (shape {tuple(p.shape)})"


def split_muon_params(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split a model's trainable parameters into (for Muon, for AdamW), as named lists.

    Muon gets every parameter with >= 2 dims, except those of nn.Embedding modules and those whose
    names mark them as embeddings or heads; everything else goes to AdamW. Tied parameters are
    listed once.
    """
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    muon, adamw, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim >= 2 and id(p) not in embedding_params and not looks_like_embedding_or_head(name):
            muon.append((name, p))
        else:
            adamw.append((name, p))
    return muon, adamw


def normalize_params(params: Iterable) -> list[dict]:
    """Turn the `params` argument of an optimizer into a list of param-group dicts.

    Accepts tensors, (name, tensor) pairs (e.g. `model.named_parameters()`), or dicts with a
    "params" key holding either; names end up in the group's "param_names" list.
    """
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list")
    groups = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
    for group in groups:
        entries = group["params"]
        entries = [entries] if isinstance(entries, torch.Tensor) else list(entries)
        if entries and isinstance(entries[0], tuple):
            group["param_names"] = [name for name, _ in entries]
            entries = [p for _, p in entries]
        group["params"] = entries
    return groups
