"""Judging a sweep: per variant the final val loss mean ± CI over seeds, and paired differences to a baseline.

:func:`compare_sweep` reads a sweep's manifest (docs/log-format.md §11) and its runs' figures from the
database (``run_summary``), so the runs must have been ingested (``sb-analysis compare --sweep`` ingests
them first). A variant's runs are paired with the baseline's by seed; the paired t-test judges each
difference, significant when p < ``alpha`` (0.01 by default: the speedrun community's bar for a new
record). The statistics are :mod:`sb_analysis.compare_stats` (docs/design/statistics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from sb_runlog import read_sweep_manifest, run_dir_of

from .compare_stats import mean_ci, paired_test

__all__ = ["DEFAULT_ALPHA", "SweepComparison", "compare_sweep", "sweep_run_table"]

DEFAULT_ALPHA = 0.01

RUN_FIGURES_SQL = """
SELECT run_id, state, final_val_loss, tokens_per_s, time_ms / 1000.0 AS train_s
FROM run_summary WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
"""


@dataclass
class SweepComparison:
    """The judgement of one sweep: ``table`` has one row per variant (the baseline's difference columns are
    null); ``runs`` one row per planned run; ``notes`` says what is missing or cannot be judged."""

    sweep_id: str
    folder: Path
    preset: str
    baseline: str
    alpha: float
    confidence: float
    table: pl.DataFrame
    runs: pl.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "folder": str(self.folder), "preset": self.preset,
                "baseline": self.baseline, "alpha": self.alpha, "confidence": self.confidence,
                "variants": self.table.to_dicts(), "notes": list(self.notes)}


def sweep_run_table(con: duckdb.DuckDBPyConnection, folder: Path, manifest: dict[str, Any]) -> pl.DataFrame:
    """One row per planned run: variant, seed, run_id, the manifest's state and wall time, whether its folder
    exists, and its figures from the database (null when it is not there)."""
    planned = manifest["runs"]
    ids = [r["run_id"] for r in planned]
    found = {row[0]: row for row in con.execute(RUN_FIGURES_SQL, [ids]).fetchall()}
    rows = []
    for r in planned:
        db_row = found.get(r["run_id"])
        rows.append({
            "variant": r["variant"], "seed": r["seed"], "run_id": r["run_id"],
            "sweep_state": r.get("state"), "wall_s": _number(r.get("wall_s")),
            "folder_exists": run_dir_of(folder, r["run_id"]).is_dir(), "in_db": db_row is not None,
            "state": db_row[1] if db_row else None, "final_val_loss": _finite(db_row[2]) if db_row else None,
            "tokens_per_s": _finite(db_row[3]) if db_row else None,
            "train_s": _finite(db_row[4]) if db_row else None,
        })
    schema = {"variant": pl.String, "seed": pl.Int64, "run_id": pl.String, "sweep_state": pl.String,
              "wall_s": pl.Float64, "folder_exists": pl.Boolean, "in_db": pl.Boolean, "state": pl.String,
              "final_val_loss": pl.Float64, "tokens_per_s": pl.Float64, "train_s": pl.Float64}
    frame = pl.DataFrame(rows, schema=schema)
    usable = (pl.col("state") == "finished") & pl.col("final_val_loss").is_not_null()
    return frame.with_columns(usable.fill_null(False).alias("usable"))


def compare_sweep(con: duckdb.DuckDBPyConnection, folder: str | Path, *, baseline: str | None = None,
                  alpha: float = DEFAULT_ALPHA, confidence: float = 0.95) -> SweepComparison:
    """Judge the sweep in ``folder`` from the runs in the database behind ``con``. KeyError for an unknown
    ``baseline``; ValueError for alpha or confidence outside (0, 1)."""
    for name, value in (("alpha", alpha), ("confidence", confidence)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (got {value})")
    folder = Path(folder)
    manifest = read_sweep_manifest(folder)
    variants = [str(v["name"]) for v in manifest["variants"]]
    base = baseline or variants[0]
    if base not in variants:
        raise KeyError(f"--baseline {base!r} is not a variant of sweep {manifest['sweep_id']!r}; its "
                       f"variants: {', '.join(variants)}")
    runs = sweep_run_table(con, folder, manifest)
    notes = [_missing_note(row) for row in runs.filter(~pl.col("usable")).iter_rows(named=True)]
    by_variant = {v: runs.filter((pl.col("variant") == v) & pl.col("usable")) for v in variants}
    base_losses = dict(zip(by_variant[base]["seed"], by_variant[base]["final_val_loss"], strict=True))
    rows = []
    for v in variants:
        part = by_variant[v]
        planned = runs.filter(pl.col("variant") == v).height
        rows.append(_variant_row(v, part, planned, base, base_losses, confidence, alpha))
        if part.height == 1:
            notes.append(f"variant {v!r} has one finished run: no confidence interval (it needs at least 2 "
                         "seeds); run the sweep with --seeds 2 or more")
        elif part.height == 0:
            notes.append(f"variant {v!r} has no finished run yet: nothing to judge")
    table = pl.DataFrame(rows, schema=TABLE_SCHEMA)
    return SweepComparison(str(manifest["sweep_id"]), folder, str(manifest.get("preset", "")), base, alpha,
                           confidence, table, runs, notes)


TABLE_SCHEMA = {
    "variant": pl.String, "n": pl.Int64, "planned": pl.Int64, "complete": pl.Boolean,
    "val_loss_mean": pl.Float64, "val_loss_ci": pl.Float64, "val_loss_std": pl.Float64,
    "tokens_per_s": pl.Float64, "train_s": pl.Float64, "wall_s": pl.Float64,
    "pairs": pl.Int64, "diff_mean": pl.Float64, "diff_ci_low": pl.Float64, "diff_ci_high": pl.Float64,
    "t": pl.Float64, "p_value": pl.Float64, "significant": pl.Boolean,
}


def _variant_row(name: str, part: pl.DataFrame, planned: int, base: str, base_losses: dict[int, float],
                 confidence: float, alpha: float) -> dict[str, Any]:
    losses = part["final_val_loss"].to_list()
    ci = mean_ci(losses, confidence) if losses else None
    row: dict[str, Any] = {
        "variant": name, "n": part.height, "planned": planned, "complete": part.height == planned,
        "val_loss_mean": ci.mean if ci else None, "val_loss_ci": ci.half_width if ci else None,
        "val_loss_std": ci.std if ci else None,
        "tokens_per_s": _mean(part["tokens_per_s"].drop_nulls().to_list()),
        "train_s": _mean(part["train_s"].drop_nulls().to_list()),
        "wall_s": _mean([w for w in part["wall_s"].drop_nulls().to_list() if w > 0]),
        "pairs": None, "diff_mean": None, "diff_ci_low": None, "diff_ci_high": None, "t": None,
        "p_value": None, "significant": None,
    }
    if name == base:
        return row
    mine = dict(zip(part["seed"], part["final_val_loss"], strict=True))
    seeds = sorted(set(mine) & set(base_losses))
    row["pairs"] = len(seeds)
    if not seeds:
        return row
    test = paired_test([base_losses[s] for s in seeds], [mine[s] for s in seeds], confidence)
    row.update(diff_mean=test.diff.mean, diff_ci_low=test.diff.low, diff_ci_high=test.diff.high,
               t=None if test.t is None or math.isinf(test.t) else test.t, p_value=test.p_value,
               significant=None if test.p_value is None else test.p_value < alpha)
    return row


def _missing_note(row: dict[str, Any]) -> str:
    what = f"run {row['run_id']} ({row['variant']}, seed {row['seed']})"
    if not row["folder_exists"]:
        return f"{what} is missing: its folder is gone (sweep state {row['sweep_state']}); it is left out"
    if not row["in_db"]:
        return f"{what} is not in the database (not ingested, or it did not start); it is left out"
    if row["state"] != "finished":
        return (f"{what} is {row['state']} (not finished): it is left out; rerun the sweep's command to "
                "finish it")
    return f"{what} has no final validation loss; it is left out"


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _finite(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None
