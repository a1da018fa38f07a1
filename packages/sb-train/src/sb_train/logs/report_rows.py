"""A RoutingReport (sb_model.bank.metrics) as router.csv rows, and the step's router summary scalars.

* per-layer statistics go to :func:`~sb_train.logs.columns.statistic_column` (``aux`` -> ``aux_loss``);
  ``layer`` comes from the row. ``max_frac`` and ``num_active`` are the bank's (largest *demanded* share,
  experts that served >= 1 choice); readers re-derive ``max_frac``/``active`` from ``load_e*``.
* ``load_e{i}``   = ``frac_srv[i] / sum(frac_dem)``: the share of the layer's routing choices that expert
  ``i`` served. Dropless it sums to 1; when capacity drops choices it sums to 1 - drop_frac, so that served
  <= demanded for every expert and the readers' capacity rule (demanded - served) sees the drops.
  (The bank's ``frac_srv``/``frac_dem`` divide by tokens * k; dividing by the valid choices instead keeps
  the sum at 1 while k exceeds the number of live experts, e.g. top-2 during the single-expert phase.)
* ``demand_e{i}`` = ``frac_dem[i] / sum(frac_dem)``: the share of the valid router choices (before capacity)
  that named expert ``i``; sums to 1 and equals ``load_e{i}`` when nothing is dropped. The bank masks
  inactive experts before top-k, so no choice can name a masked expert: demand is "before capacity",
  after the mask.
* ``importance_e{i}`` = ``importance[i]``: mean router probability over tokens (already sums to 1).
* the bank's ``load`` vector (the reference's top-1 share per expert) is not written as columns: it is what
  ``load_cv2``, ``load_entropy`` and ``usage_frac`` summarise, and for top-1 routing it equals the
  unnormalised ``frac_dem``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from sb_runlog import expert_column
from sb_runlog.columns import ROUTER_SUMMARY_COLUMNS

from sb_model.bank.metrics import RoutingReport

from .columns import statistic_column

SUMMARY_PREFIX = "router/"


def _shares(values: Sequence[float], total: float) -> list[float]:
    return [v / total for v in values] if total > 0 else [float(v) for v in values]


def router_rows(
    step: int,
    report: RoutingReport,
    *,
    tokens_per_layer: int | None = None,
    layer_values: Mapping[str, Sequence[float | None]] | None = None,
) -> list[dict[str, Any]]:
    """router.csv rows (column -> value) for one step's report, one per layer in it.

    ``layer_values`` adds per-layer values the report does not carry (e.g. ``ema_alpha_forward``), indexed
    by layer.
    """
    rows = []
    vectors = report.vectors
    for j, stats in enumerate(report.per_layer):
        layer = int(stats["layer"])
        row: dict[str, Any] = {"step": step, "layer": layer, "tokens": tokens_per_layer}
        for key, value in stats.items():
            if key != "layer":
                row[statistic_column(key)] = value
        for name, per_layer in (layer_values or {}).items():
            row[name] = per_layer[layer]
        choices = sum(vectors["frac_dem"][j])
        for family, values in (
            ("load", _shares(vectors["frac_srv"][j], choices)),
            ("demand", _shares(vectors["frac_dem"][j], choices)),
            ("importance", vectors["importance"][j]),
        ):
            for i, value in enumerate(values):
                row[expert_column(family, i)] = value
        rows.append(row)
    return rows


def fill_router_summary(row: MutableMapping[str, Any], summary: Mapping[str, float]) -> None:
    """Fill the scalars row's ``router_<x>`` summary columns from ``router/<x>`` of the report summary,
    where the caller gave no value."""
    for column in ROUTER_SUMMARY_COLUMNS:
        key = SUMMARY_PREFIX + column.removeprefix("router_")
        if row.get(column) is None and key in summary:
            row[column] = summary[key]
