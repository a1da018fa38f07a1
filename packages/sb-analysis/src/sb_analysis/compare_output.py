"""``sb-analysis compare --sweep``: find the sweep, ingest its runs, judge it, print table, CSV or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

import polars as pl
from sb_runlog import find_sweep, read_sweep_manifest, run_dir_of

from .api import RunDB
from .compare_sweep import SweepComparison, compare_sweep
from .ingest import ingest
from .table import print_frame

FORMATS = ("table", "csv", "json")


def run_compare_sweep(sweep: str, db: str | Path, *, runs_root: str | None = None,
                      baseline: str | None = None, alpha: float, confidence: float, fmt: str = "table",
                      out: TextIO | None = None) -> int:
    """The command: 0 when something could be judged, 1 when no run of the sweep has finished."""
    out = sys.stdout if out is None else out
    folder = find_sweep(sweep, [runs_root or "runs"])
    manifest = read_sweep_manifest(folder)
    present = [run_dir_of(folder, r["run_id"]) for r in manifest["runs"]]
    present = [p for p in present if p.is_dir()]
    failures: list[str] = []
    if present:
        report = ingest(present, db)
        failures = [f"ingest of {path}: {message}" for path, message in report.failures]
    with RunDB(db) as handle:
        result = compare_sweep(handle.connection, folder, baseline=baseline, alpha=alpha,
                               confidence=confidence)
    result.notes[:0] = failures
    if fmt == "json":
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        out.write(result.table.write_csv())
    else:
        print_table(result, out)
    if fmt != "table":
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0 if int(result.table["n"].sum()) > 0 else 1


def print_table(result: SweepComparison, out: TextIO) -> None:
    """The human view: the variants, then the paired differences, then the notes."""
    level = f"{result.confidence:.0%}"
    t = result.table
    print(f"sweep {result.sweep_id} ({result.folder}), preset {result.preset!r}: final val loss, mean ± "
          f"{level} CI (Student t) over seeds", file=out)
    variants = t.select(
        "variant",
        pl.format("{}/{}", "n", "planned").alias("runs"),
        pl.when(pl.col("complete")).then(pl.lit("")).otherwise(pl.lit("incomplete")).alias("note"),
        _fmt("val_loss_mean", 4).alias("val_loss"),
        _pm("val_loss_ci").alias(f"± {level} CI"),
        _fmt("tokens_per_s", 0).alias("tokens/s"),
        _fmt("train_s", 1).alias("train s"),
        _fmt("wall_s", 1).alias("wall s"),
    )
    _print(variants, out)
    others = t.filter(pl.col("variant") != result.baseline)
    if others.height:
        print(f"\npaired by seed: variant − {result.baseline!r} (negative = lower loss); significant: p < "
              f"{result.alpha:g}", file=out)
        diffs = others.select(
            "variant", "pairs",
            _fmt("diff_mean", 4).alias("diff"),
            pl.format("[{}, {}]", _fmt("diff_ci_low", 4), _fmt("diff_ci_high", 4)).alias(f"{level} CI"),
            _fmt("t", 2).alias("t"),
            _fmt("p_value", 4).alias("p"),
            pl.when(pl.col("significant").is_null()).then(pl.lit("-"))
            .when(pl.col("significant")).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("significant"),
        )
        _print(diffs, out)
    for note in result.notes:
        print(f"note: {note}", file=out)


def _print(frame: pl.DataFrame, out: TextIO) -> None:
    if out is sys.stdout:
        print_frame(frame, 1000)
    else:
        out.write(frame.write_csv(separator="\t"))


def _fmt(column: str, digits: int) -> pl.Expr:
    return (pl.col(column).round(digits).cast(pl.String).fill_null("-") if digits else
            pl.col(column).round(0).cast(pl.Int64).cast(pl.String).fill_null("-"))


def _pm(column: str) -> pl.Expr:
    return pl.when(pl.col(column).is_null()).then(pl.lit("-")).otherwise(
        pl.format("± {}", pl.col(column).round(4).cast(pl.String)))
