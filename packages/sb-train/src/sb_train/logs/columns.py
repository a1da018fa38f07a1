"""The trainer's scalars.csv and router.csv headers, and which router.csv column each bank statistic fills.

Column sets are fixed when the logger is built (a CSV header never changes within a segment):

* scalars.csv: :data:`SCALAR_HEAD` + ``lr_<group>`` per param group + :data:`SCALAR_TAIL`, i.e. every column
  docs/log-format.md §3 declares, with the learning rates after the validation columns.
* router.csv: :data:`ROUTER_SCALARS` (one column per statistic the bank reports, so a new bank statistic
  reaches the CSV, plus the EMA mixing coefficients) + ``feat_w_<name>`` per router input feature + the
  per-expert vectors ``load_e{i}``, ``demand_e{i}``, ``importance_e{i}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sb_runlog import check_column_name, expert_columns
from sb_runlog.columns import FEATURE_WEIGHT_PREFIX, LR_PREFIX, SCALARS_COLUMNS
from sb_runlog.header_check import check_unique

from sb_model.bank.metrics import SCALAR_KEYS

# bank statistic (RoutingReport.per_layer key) -> router.csv column; statistics not listed keep their name
STATISTIC_RENAMES = {"aux": "aux_loss"}

_DECLARED = list(SCALARS_COLUMNS)
_AFTER_VALIDATION = _DECLARED.index("val_tokens") + 1
SCALAR_HEAD: tuple[str, ...] = tuple(_DECLARED[:_AFTER_VALIDATION])
SCALAR_TAIL: tuple[str, ...] = tuple(_DECLARED[_AFTER_VALIDATION:])
ROUTER_SCALARS: tuple[str, ...] = (
    "step",
    "layer",
    "tokens",
    *(STATISTIC_RENAMES.get(key, key) for key in SCALAR_KEYS),
    "ema_alpha_forward",
    "ema_alpha_reverse",
)


def statistic_column(key: str) -> str:
    """The router.csv column of a bank statistic or of a ``feat_w_<name>`` value."""
    return STATISTIC_RENAMES.get(key, key)


def scalar_columns(lr_groups: Sequence[str]) -> list[str]:
    """The scalars.csv header for these param-group names (``lr_<group>`` columns)."""
    lr = [LR_PREFIX + check_column_name(group, "lr group") for group in lr_groups]
    columns = [*SCALAR_HEAD, *lr, *SCALAR_TAIL]
    check_unique(columns)
    return columns


def router_columns(num_experts: int, feature_names: Sequence[str] = ()) -> list[str]:
    """The router.csv header: scalars, ``feat_w_<name>`` per feature, then the three per-expert families."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1 (got {num_experts})")
    features = [FEATURE_WEIGHT_PREFIX + check_column_name(name, "router feature") for name in feature_names]
    columns = [*ROUTER_SCALARS, *features, *expert_columns(num_experts)]
    check_unique(columns)
    return columns
