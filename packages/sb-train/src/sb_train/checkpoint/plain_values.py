"""What a checkpoint file may hold: values ``torch.load(weights_only=True)`` rebuilds without running code.

:func:`check_weights_only` walks a state dict before it is saved and raises TypeError naming the first value
such a load could not read back (see :mod:`sb_train.checkpoint.store`, serialization).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["check_weights_only"]

_LEAF_TYPES: tuple[type, ...] = (
    type(None), bool, int, float, complex, str, bytes, bytearray,
    torch.Size, torch.dtype, torch.device, torch.layout,
)  # fmt: skip
_CONTAINER_TYPES: tuple[type, ...] = (list, tuple, set, dict, collections.OrderedDict, collections.Counter)


def _safe_globals() -> set[type]:
    getter = getattr(torch.serialization, "get_safe_globals", None)  # torch >= 2.5
    if getter is None:
        return set()
    return {g for g in getter() if isinstance(g, type)}


def check_weights_only(obj: Any, label: str) -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` could not rebuild."""
    extra = _safe_globals()
    stack: list[tuple[Any, str]] = [(obj, label)]
    while stack:
        value, where = stack.pop()
        kind = type(value)
        if kind in _LEAF_TYPES or kind in extra or kind in (torch.Tensor, torch.nn.Parameter):
            continue
        if kind in _CONTAINER_TYPES:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    stack.append((key, f"{where} key {key!r}"))
                    stack.append((item, f"{where}[{key!r}]"))
            else:
                stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
            continue
        raise TypeError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) cannot "
            "read back; store plain values instead (dataclasses.asdict(config), float(x), "
            "torch.from_numpy(a)) or register the class with torch.serialization.add_safe_globals"
        )
