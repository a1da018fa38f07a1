"""Router-health findings in plain language, from the health views (and the domain-specialisation line).

Rules are the router-metrics guide's (docs/log-format.md §7). Each rule is evaluated on step windows (per
layer or per run); consecutive windows that break the same rule are merged into one finding with its step
range. Collapse is found per logged step, so its onset step is exact ("layer 7 collapsed onto expert 3 from
step 1,200").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import polars as pl
from sb_runlog.health_thresholds import (
    ACTIVE_LOW_STEP_FRAC_MAX,
    CLIPPED_STEP_FRAC_MAX,
    COLLAPSE_MAX_FRAC,
    DEMAND_SERVED_GAP_MAX,
    DROP_FRAC_MAX,
    IMBALANCE_MAX_FRAC,
    LOW_HEALTH_SCORE,
    PEAKY_TOP1_P,
    SEVERE_IMBALANCE_MAX_FRAC,
    diffuse_top1_p,
    entropy_bounds,
)

from .domain_health import specialisation_finding
from .views import window_query

SEVERITY_ORDER = {"bad": 0, "warn": 1, "info": 2, "ok": 3}
FINDING_SCHEMA = {
    "run_id": pl.String,
    "severity": pl.String,
    "rule": pl.String,
    "layer": pl.Int64,
    "step_from": pl.Int64,
    "step_to": pl.Int64,
    "value": pl.Float64,
    "threshold": pl.Float64,
    "message": pl.String,
}


@dataclass(frozen=True)
class WindowRule:
    """A guide rule on one window aggregate: breached when `value op threshold(E)`."""

    name: str
    scope: str  # "layer" or "run"
    column: str
    above: bool
    threshold: Callable[[int], float]
    severity: str
    text: str  # format fields: {value}, {threshold}

    def breached(self, value: float | None, n_experts: int) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        limit = self.threshold(n_experts)
        return value > limit if self.above else value < limit


RULES: tuple[WindowRule, ...] = (
    WindowRule(
        "peaky",
        "layer",
        "top1_p_mean",
        True,
        lambda E: PEAKY_TOP1_P,
        "warn",
        "router too confident: top1_p_mean {value:.2f} > {threshold:.2f} (risk of collapse; raise the "
        "router temperature or noise)",
    ),
    WindowRule(
        "diffuse",
        "layer",
        "top1_p_mean",
        False,
        diffuse_top1_p,
        "info",
        "router too diffuse: top1_p_mean {value:.3f} < 1.2/E = {threshold:.3f} (little specialisation)",
    ),
    WindowRule(
        "severe_imbalance",
        "layer",
        "max_frac_mean",
        True,
        lambda E: SEVERE_IMBALANCE_MAX_FRAC,
        "bad",
        "severe imbalance: the busiest expert takes {value:.0%} of the tokens (> {threshold:.0%})",
    ),
    WindowRule(
        "imbalance",
        "layer",
        "max_frac_mean",
        True,
        lambda E: IMBALANCE_MAX_FRAC,
        "warn",
        "imbalance: the busiest expert takes {value:.0%} of the tokens (sustained > {threshold:.0%}; "
        "raise the balance loss or the temperature)",
    ),
    WindowRule(
        "low_entropy",
        "layer",
        "entropy_mean",
        False,
        lambda E: entropy_bounds(E)[0],
        "warn",
        "router entropy {value:.2f} nats < 0.2·ln E = {threshold:.2f} (over-confident)",
    ),
    WindowRule(
        "capacity",
        "layer",
        "dem_srv_gap",
        True,
        lambda E: DEMAND_SERVED_GAP_MAX,
        "warn",
        "demanded exceeds served by {value:.3f} (capacity too tight or experts masked)",
    ),
    WindowRule(
        "max_frac_max",
        "run",
        "max_frac_max",
        True,
        lambda E: SEVERE_IMBALANCE_MAX_FRAC,
        "warn",
        "max_frac_max {value:.2f} sustained > {threshold:.2f} (some layer is badly imbalanced)",
    ),
    WindowRule(
        "active_low",
        "run",
        "active_low_frac",
        True,
        lambda E: ACTIVE_LOW_STEP_FRAC_MAX,
        "warn",
        "active_min dips to 2 or fewer experts in {value:.0%} of the steps (collapse onset)",
    ),
    WindowRule(
        "drops",
        "run",
        "drop_frac_mean",
        True,
        lambda E: DROP_FRAC_MAX,
        "warn",
        "{value:.1%} of the assignments dropped by capacity (> {threshold:.0%})",
    ),
    WindowRule(
        "clipping",
        "run",
        "clipped_frac",
        True,
        lambda E: CLIPPED_STEP_FRAC_MAX,
        "warn",
        "router gradient clipped in {value:.0%} of the steps (guide: below 5–10%)",
    ),
    WindowRule(
        "low_health_score",
        "run",
        "health_score",
        False,
        lambda E: LOW_HEALTH_SCORE,
        "warn",
        "composite router-health score {value:.2f} < {threshold:.2f}",
    ),
)
UNDER_SPECIALISED = WindowRule(
    "under_specialised",
    "layer",
    "entropy_mean",
    True,
    lambda E: entropy_bounds(E)[1],
    "info",
    "router entropy {value:.2f} nats is near ln E = {threshold:.2f} late in training (under-specialised)",
)


def _fmt_steps(step_from: int, step_to: int, last_step: int) -> str:
    if step_to >= last_step:
        return f"from step {step_from:,}"
    return f"in steps {step_from:,}–{step_to:,}"


def collapse_episodes(
    layer_steps: pl.DataFrame, min_points: int = 3
) -> list[tuple[int, int, int, int, float, int]]:
    """Sustained collapse episodes of one layer: (start, end, run length, expert, max_frac, active).

    `layer_steps` has step, collapsed_rule, top_expert, max_frac, active sorted by step. Gaps shorter than
    `min_points` logged steps inside an episode are bridged.
    """
    steps = layer_steps["step"].to_list()
    flags = [bool(f) for f in layer_steps["collapsed_rule"].fill_null(False).to_list()]
    episodes: list[tuple[int, int]] = []
    start = None
    gap = 0
    for idx, flag in enumerate(flags):
        if flag:
            if start is None:
                start = idx
            gap = 0
            end = idx
        elif start is not None:
            gap += 1
            if gap >= min_points:
                episodes.append((start, end))
                start = None
                gap = 0
    if start is not None:
        episodes.append((start, end))
    found = []
    for a, b in episodes:
        if b - a + 1 < min_points:
            continue
        part = layer_steps[a : b + 1].filter(pl.col("collapsed_rule"))
        expert = part["top_expert"].mode().sort().to_list()
        found.append(
            (
                steps[a],
                steps[b],
                b - a + 1,
                int(expert[0]) if expert and expert[0] is not None else -1,
                float(part["max_frac"].mean() or float("nan")),
                int(part["active"].min() or 0),
            )
        )
    return found


def _merge_windows(
    frame: pl.DataFrame,
    rule: WindowRule,
    run_id: str,
    layer: int | None,
    last_step: int,
    late_only: bool = False,
) -> list[dict]:
    findings = []
    current: dict | None = None
    windows = frame.sort("window_idx").to_dicts()
    late_from = len(windows) - max(1, len(windows) // 3)
    for idx, row in enumerate(windows):
        E = int(row.get("n_experts") or 8)
        hit = rule.breached(row.get(rule.column), E) and (not late_only or idx >= late_from)
        covered = rule.scope == "layer" or rule.name in ("max_frac_max", "active_low")
        if covered and (row.get("collapsed_frac") or 0) >= 0.5:
            hit = False  # the collapse finding already covers this window
        if hit:
            value = float(row[rule.column])
            if current is None:
                current = {
                    "step_from": row["step_from"],
                    "step_to": row["step_to"],
                    "value": value,
                    "threshold": rule.threshold(E),
                }
            else:
                current["step_to"] = row["step_to"]
                worse = value > current["value"] if rule.above else value < current["value"]
                current["value"] = value if worse else current["value"]
        elif current is not None:
            findings.append(current)
            current = None
    if current is not None:
        findings.append(current)
    out = []
    for f in findings:
        where = f"layer {layer}: " if layer is not None else ""
        text = rule.text.format(value=f["value"], threshold=f["threshold"])
        out.append(
            {
                "run_id": run_id,
                "severity": rule.severity,
                "rule": rule.name,
                "layer": layer,
                "step_from": f["step_from"],
                "step_to": f["step_to"],
                "value": f["value"],
                "threshold": f["threshold"],
                "message": f"{where}{text} {_fmt_steps(f['step_from'], f['step_to'], last_step)}",
            }
        )
    return out


def findings(
    con: duckdb.DuckDBPyConnection, run_id: str, window: int | None = None, min_collapse_points: int = 3
) -> pl.DataFrame:
    """Plain-language router-health findings of one run, worst first."""
    layer_windows = con.sql(window_query(per_layer=True, window=window, run_id=run_id)).pl()
    run_windows = con.sql(window_query(per_layer=False, window=window, run_id=run_id)).pl()
    if run_windows.is_empty():
        return pl.DataFrame(
            [
                {
                    "run_id": run_id,
                    "severity": "info",
                    "rule": "no_router_data",
                    "layer": None,
                    "step_from": None,
                    "step_to": None,
                    "value": None,
                    "threshold": None,
                    "message": "no router metrics logged for this run (router.csv missing or empty)",
                }
            ],
            schema=FINDING_SCHEMA,
        )
    last_step = int(run_windows["step_to"].max())  # type: ignore[arg-type]
    rows: list[dict] = []
    layer_steps = con.sql(
        "SELECT layer, step, collapsed_rule, top_expert, max_frac, active, n_experts "
        "FROM router_layer_metrics WHERE run_id = ? ORDER BY layer, step",
        params=[run_id],
    ).pl()
    for (layer,), part in layer_steps.group_by(["layer"], maintain_order=True):
        E = int(part["n_experts"].max() or 8)  # type: ignore[arg-type]
        for start, end, _n, expert, max_frac, active in collapse_episodes(part, min_collapse_points):
            until = "" if end >= last_step else f" until step {end:,}, then recovered"
            onto = f" onto expert {expert}" if expert >= 0 else ""
            rows.append(
                {
                    "run_id": run_id,
                    "severity": "bad",
                    "rule": "collapse",
                    "layer": int(layer),
                    "step_from": start,
                    "step_to": end,
                    "value": max_frac,
                    "threshold": COLLAPSE_MAX_FRAC,
                    "message": f"layer {layer} collapsed{onto} from step {start:,}{until} "
                    f"(busiest expert {max_frac:.0%} of tokens, {active} of {E} experts active)",
                }
            )
    for rule in RULES:
        if rule.scope == "layer":
            for (layer,), part in layer_windows.group_by(["layer"], maintain_order=True):
                rows += _merge_windows(part, rule, run_id, int(layer), last_step)
        else:
            rows += _merge_windows(run_windows, rule, run_id, None, last_step)
    for (layer,), part in layer_windows.group_by(["layer"], maintain_order=True):
        rows += _merge_windows(part, UNDER_SPECIALISED, run_id, int(layer), last_step, late_only=True)
    # one imbalance finding per range: drop the milder one where the severe one fired on the same layer
    severe = {(r["layer"], r["step_from"]) for r in rows if r["rule"] == "severe_imbalance"}
    rows = [r for r in rows if not (r["rule"] == "imbalance" and (r["layer"], r["step_from"]) in severe)]
    if not rows:
        final = run_windows.sort("window_idx")[-1]
        rows.append(
            {
                "run_id": run_id,
                "severity": "ok",
                "rule": "healthy",
                "layer": None,
                "step_from": int(run_windows["step_from"].min()),
                "step_to": last_step,  # type: ignore[arg-type]
                "value": float(final["health_score"][0]),
                "threshold": None,
                "message": f"router healthy: no guide rule broken; final health score "
                f"{float(final['health_score'][0]):.2f}",
            }
        )
    specialisation = specialisation_finding(con, run_id)  # informative, so after the "healthy" verdict
    if specialisation is not None:
        rows.append(specialisation)
    frame = pl.DataFrame(rows, schema=FINDING_SCHEMA)
    return (
        frame.with_columns(
            pl.col("severity").replace_strict(SEVERITY_ORDER, return_dtype=pl.Int32).alias("_order")
        )
        .sort(["_order", "layer", "step_from"], nulls_last=True)
        .drop("_order")
    )
