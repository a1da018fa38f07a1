"""Deciding which parameters Muon may update.

Muon orthogonalizes matrices. It must not update 0-D/1-D parameters (biases, norms, scalars),
and it should not update embeddings or output heads: their rows are looked up or read out one
token at a time, so an orthogonalized whole-matrix step is the wrong geometry for them.
"""

from __future__ import annotations

import re
import warnings
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


def output_layer(model: nn.Module) -> nn.Module | None:
    """The output layer of an nn.Sequential model, found by structure, or None.

    In an nn.Sequential the last child runs last, so the last child holding parameters (skipping
    activations, dropout, flatten) is the output layer when it is a leaf module (a Linear, a conv,
    ...); a nested nn.Sequential is searched the same way. Other models run their children in an
    order only their ``forward`` knows, so they get None here: name their head (``lm_head``,
    ``head``, ``classifier``, ...) or pass it to ``split_muon_params(model, adamw=[...])``.
    """
    if not isinstance(model, nn.Sequential):
        return None
    while isinstance(model, nn.Sequential):
        tail = next((m for m in reversed(model) if any(True for _ in m.parameters())), None)
        if tail is None or (not isinstance(tail, nn.Sequential) and any(True for _ in tail.children())):
            return None
        model = tail
    return model


def split_muon_params(
    model: nn.Module, *, adamw: Iterable[nn.Module | torch.Tensor] = (),
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split a model's trainable parameters into (for Muon, for AdamW), as named lists.

    AdamW gets every parameter with < 2 dims, the weights of nn.Embedding modules, parameters whose
    names mark them as embeddings or heads, the output layer of an nn.Sequential (see
    :func:`output_layer`), and everything in `adamw` (modules or parameters: the way to name a head
    or an input layer that none of these rules finds). Muon gets the other parameters. Tied
    parameters are listed once.
    """
    to_adamw = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = output_layer(model)
    if head is not None:
        to_adamw.update(id(p) for p in head.parameters())
    for item in adamw:
        to_adamw.update(id(p) for p in (item.parameters() if isinstance(item, nn.Module) else [item]))
    muon, other, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim >= 2 and id(p) not in to_adamw and not looks_like_embedding_or_head(name):
            muon.append((name, p))
        else:
            other.append((name, p))
    return muon, other


_NOT_ITERABLE = ("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                 "but got {}")
_UNORDERED = ("optimizer parameters need to be organized in ordered collections, but the ordering of "
              "a set changes between runs; pass a list")


def normalize_params(params: Iterable) -> list[dict]:
    """Turn the `params` argument of an optimizer into a list of param-group dicts.

    Accepts tensors, (name, tensor) pairs (e.g. `model.named_parameters()`), or dicts with a
    "params" key holding either; names end up in the group's "param_names" list. Refuses what
    torch.optim refuses, with its error types: a bare tensor (TypeError), names on some but not
    all parameters of a group (ValueError); warns on a set (FutureWarning), as torch does.
    """
    if isinstance(params, torch.Tensor):
        raise TypeError(_NOT_ITERABLE.format(torch.typename(params)))
    if isinstance(params, set):
        warnings.warn(_UNORDERED, FutureWarning, stacklevel=3)
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list")
    groups = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
    for group in groups:
        entries = group["params"]
        if isinstance(entries, set):
            raise TypeError(_UNORDERED)
        entries = [entries] if isinstance(entries, torch.Tensor) else list(entries)
        named = [isinstance(e, tuple) for e in entries]
        if any(named) and not all(named):
            raise ValueError("all optimizer params should be with/without names. Some param names are "
                             "missing: pass (name, tensor) pairs for every parameter of a group or for none")
        if entries and all(named):
            group["param_names"] = [name for name, _ in entries]
            entries = [p for _, p in entries]
        group["params"] = entries
    return groups
