"""W&B key <-> CSV column names (docs/log-format.md §8): the trainer logs under these keys, readers map back.

The reference's names for the scalars that have one (``train/loss``, ``val/loss``, ...), ``lr/<group>`` for
``lr_<group>``, ``router/<x>`` for ``router_<x>``, ``router_layer/{i}/<column>`` for router.csv values, and
the column name itself for every other scalar. W&B's own keys (``_timestamp``, ``_step``, ...) map to
``wall_time`` or to nothing.
"""

from __future__ import annotations

import re

from .columns import LR_PREFIX

# scalars.csv column -> the reference's W&B key
REFERENCE_KEYS: dict[str, str] = {
    "loss": "train/loss",
    "loss_main": "train/loss_main",
    "loss_aux": "train/loss_aux",
    "val_loss": "val/loss",
    "val_tokens": "val/tokens",
    "time_ms": "perf/approx_step_time_ms",
    "tokens": "train/tokens_seen",
    "router_temp": "router/temperature",
    "logit_cap": "router/logit_cap",
}
STEP_KEY = "train/step"  # the step index, logged alongside W&B's own step
NOT_LOGGED = frozenset({"step", "wall_time"})  # W&B keeps these itself (its step, _timestamp)
# W&B's own keys (and the step keys) -> scalars.csv column, None for keys that carry no column
WANDB_OWN_KEYS: dict[str, str | None] = {
    "_timestamp": "wall_time",
    "_step": None,
    "_runtime": None,
    STEP_KEY: None,
    "val/step": None,
}
_COLUMNS_BY_KEY = {key: column for column, key in REFERENCE_KEYS.items()}
_LAYER_KEY = re.compile(r"^router_layer/(\d+)/(.+)$")
_LR_KEY = "lr/"
_ROUTER_KEY = "router/"
_ROUTER_COLUMN = "router_"


def scalar_key(column: str) -> str | None:
    """The W&B key of a scalars.csv column (None for ``step`` and ``wall_time``, which W&B keeps itself)."""
    if column in NOT_LOGGED:
        return None
    if column in REFERENCE_KEYS:
        return REFERENCE_KEYS[column]
    if column.startswith(LR_PREFIX):
        return _LR_KEY + column.removeprefix(LR_PREFIX)
    if column.startswith(_ROUTER_COLUMN):
        return _ROUTER_KEY + column.removeprefix(_ROUTER_COLUMN)
    return column


def layer_key(layer: int, column: str) -> str:
    """The W&B key of one router.csv value of one layer."""
    return f"router_layer/{layer}/{column}"


def split_layer_key(key: str) -> tuple[int, str] | None:
    """(layer, router.csv column) of a ``router_layer/{i}/<name>`` key, else None."""
    match = _LAYER_KEY.match(key)
    if match is None:
        return None
    return int(match.group(1)), column_name(match.group(2))


def column_name(key: str) -> str:
    """Any W&B key as a valid column name: lower case, ``[a-z0-9_]``, starting with a letter."""
    name = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = "m_" + name
    return name


def scalar_column(key: str) -> str | None:
    """The scalars.csv column a W&B step key maps back to (None for W&B's keys that carry no column)."""
    if key in WANDB_OWN_KEYS:
        return WANDB_OWN_KEYS[key]
    if key in _COLUMNS_BY_KEY:
        return _COLUMNS_BY_KEY[key]
    if key.startswith(_LR_KEY):
        return LR_PREFIX + column_name(key.removeprefix(_LR_KEY))
    if key.startswith(_ROUTER_KEY):
        return _ROUTER_COLUMN + column_name(key.removeprefix(_ROUTER_KEY))
    return column_name(key)
