"""The declared columns of scalars.csv, router.csv and domains.csv with their types (docs/log-format.md §3-5).

Every column listed here has a declared type; any other column of a table is a DOUBLE metric, so a writer
can add metrics without a format change. Types are named as in the format document (and in DuckDB):
``BIGINT``, ``INTEGER``, ``DOUBLE``, ``VARCHAR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["BIGINT", "INTEGER", "DOUBLE", "VARCHAR"]
INTEGER_TYPES: frozenset[str] = frozenset({"BIGINT", "INTEGER"})
UNDECLARED_TYPE: ColumnType = "DOUBLE"

SCALARS_COLUMNS: dict[str, ColumnType] = {
    "step": "BIGINT",
    "time_ms": "DOUBLE",
    "wall_time": "DOUBLE",
    "tokens": "BIGINT",
    "loss": "DOUBLE",
    "loss_main": "DOUBLE",
    "loss_aux": "DOUBLE",
    "val_loss": "DOUBLE",
    "val_tokens": "BIGINT",
    "momentum": "DOUBLE",
    "router_temp": "DOUBLE",
    "logit_cap": "DOUBLE",
    "gumbel_scale": "DOUBLE",
    "window_blocks": "BIGINT",
    "active_experts": "BIGINT",
    "router_grad_norm": "DOUBLE",
    "router_clip": "DOUBLE",
    "router_clipped": "INTEGER",
    "grad_norm": "DOUBLE",
    "router_imp_cv2": "DOUBLE",
    "router_load_cv2": "DOUBLE",
    "router_usage_frac": "DOUBLE",
    "router_topk_prob_mean": "DOUBLE",
    "router_max_logit": "DOUBLE",
    "peak_mem_mib": "DOUBLE",
    "tokens_per_s": "DOUBLE",
}
# the per-step router summary columns: `router_<x>` is the mean over layers of router.csv's `<x>`
ROUTER_SUMMARY_COLUMNS: tuple[str, ...] = (
    "router_imp_cv2",
    "router_load_cv2",
    "router_usage_frac",
    "router_topk_prob_mean",
    "router_max_logit",
)
# learning rates are one column per param group, `lr_<group>` (DOUBLE, not listed one by one)
LR_PREFIX = "lr_"

ROUTER_COLUMNS: dict[str, ColumnType] = {
    "step": "BIGINT",
    "layer": "INTEGER",
    "tokens": "BIGINT",
    "imp_cv2": "DOUBLE",
    "load_cv2": "DOUBLE",
    "usage_frac": "DOUBLE",
    "topk_prob_mean": "DOUBLE",
    "top1_p_mean": "DOUBLE",
    "imp_entropy": "DOUBLE",
    "load_entropy": "DOUBLE",
    "entropy_mean": "DOUBLE",
    "max_logit": "DOUBLE",
    "max_frac": "DOUBLE",
    "num_active": "DOUBLE",
    "live_experts": "DOUBLE",
    "aux_loss": "DOUBLE",
    "z_loss": "DOUBLE",
    "drop_frac": "DOUBLE",
    "ema_alpha_forward": "DOUBLE",
    "ema_alpha_reverse": "DOUBLE",
    "collapsed": "INTEGER",
}
# router input-feature weights: one column per feature, `feat_w_<feature>` (DOUBLE)
FEATURE_WEIGHT_PREFIX = "feat_w_"
# per-expert vectors of router.csv: `<family>_e<i>` for i in 0 .. E-1, all present or none (DOUBLE)
EXPERT_FAMILIES: tuple[str, ...] = ("load", "demand", "importance")

DOMAIN_COLUMNS: dict[str, ColumnType] = {
    "step": "BIGINT",
    "layer": "INTEGER",
    "domain": "VARCHAR",
    "expert": "INTEGER",
    "tokens": "BIGINT",
    "nmi": "DOUBLE",
}

# columns written with every digit of a double (repr) instead of 9 significant digits: Unix seconds need
# more than 9 digits to keep sub-second resolution
FULL_PRECISION_COLUMNS: frozenset[str] = frozenset({"wall_time"})


@dataclass(frozen=True)
class TableSpec:
    """One CSV table of the format: its name (also the file stem), declared columns, required columns, key."""

    name: str
    declared: Mapping[str, ColumnType]
    required: tuple[str, ...]
    key: tuple[str, ...]

    def column_type(self, column: str) -> ColumnType:
        """The declared type of ``column``; DOUBLE for a column the format does not list."""
        return self.declared.get(column, UNDECLARED_TYPE)


SCALARS = TableSpec("scalars", SCALARS_COLUMNS, required=("step", "time_ms"), key=("step",))
ROUTER = TableSpec("router", ROUTER_COLUMNS, required=("step", "layer"), key=("step", "layer"))
DOMAINS = TableSpec(
    "domains",
    DOMAIN_COLUMNS,
    required=("step", "layer", "domain", "expert", "tokens"),
    key=("step", "layer", "domain", "expert"),
)
TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (SCALARS, ROUTER, DOMAINS)}


def expert_column(family: str, expert: int) -> str:
    """The router.csv column of one expert's value in a per-expert family, e.g. ``load_e3``."""
    if family not in EXPERT_FAMILIES:
        raise ValueError(f"unknown per-expert family {family!r}; the format has {EXPERT_FAMILIES}")
    return f"{family}_e{expert}"


def expert_columns(num_experts: int) -> list[str]:
    """Every per-expert column of router.csv for ``num_experts`` experts, family by family."""
    return [expert_column(family, i) for family in EXPERT_FAMILIES for i in range(num_experts)]
