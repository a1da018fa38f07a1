"""Every query of the app, through sb-analysis's read-only `RunDB`, cached per database version.

The cache key of each query starts with `DbVersion` (path and a fingerprint of the content): an ingest
that loaded something changes the fingerprint, so cached answers of the old content are never served for
the new one, while an ingest that found nothing new (it still rewrites the file) keeps every cache.
Curves are downsampled in the query (bucket means per layer for router metrics; bucket last value plus
min/max for losses), so pages stay fast on big runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import streamlit as st

from sb_analysis import Limits, QueryResult, RunDB, ingest

MAX_POINTS = 400  # points per curve after downsampling
ROUTER_LINE_METRICS = ("entropy_mean", "load_cv2", "imp_cv2", "topk_prob_mean", "max_logit",
                       "max_frac", "health_score")
SCHEDULE_COLUMNS = ("active_experts", "router_temp", "logit_cap")
SQL_ROW_LIMIT = 10_000
# Every connection of the app: one visitor's query cannot take all memory or cores, or run forever.
LIMITS = Limits(memory_limit="2GB", threads=min(4, os.cpu_count() or 1), timeout_s=30.0,
                max_rows=SQL_ROW_LIMIT)


@dataclass(frozen=True)
class DbVersion:
    """A database's content as of one ingest: hashable, the first key of every cached query."""

    path: str
    fingerprint: str


FINGERPRINT_SQL = """
SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM router_layers), (SELECT count(*) FROM domain_load),
    (SELECT coalesce(sum(bytes_done), 0) FROM ingest_files),
    (SELECT md5(coalesce(string_agg(concat_ws('|', run_id, state, total_steps, status::VARCHAR), ','
                                    ORDER BY run_id), '')) FROM runs)
"""


def db_version(path: str | Path) -> DbVersion:
    """The version of the database at `path` (its content fingerprint is recomputed only when the file
    changed on disk)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"database {p} does not exist: start the app with `-- --runs RUN_DIR` to ingest run "
            f"directories, or create it with `sb-analysis ingest RUN_DIR --db {p}`"
        )
    stat = p.stat()
    resolved = str(p.resolve())
    return DbVersion(resolved, _fingerprint(resolved, stat.st_mtime_ns, stat.st_size))


@st.cache_data(show_spinner=False, max_entries=64)
def _fingerprint(path: str, mtime_ns: int, size: int) -> str:
    """Row counts, loaded bytes and the runs' states: what an ingest that loaded something changes."""
    with RunDB(path, limits=LIMITS) as db:
        row = db.connection.execute(FINGERPRINT_SQL).fetchall()[0]
    return ":".join(str(v) for v in row or ())


def _db(version: DbVersion) -> RunDB:
    return RunDB(version.path, limits=LIMITS)


@dataclass(frozen=True)
class IngestSummary:
    db: str
    runs: int
    new_rows: int
    failures: tuple[tuple[str, str], ...]
    row_errors: int
    seconds: float


def ingest_runs(db: Path, runs: tuple[Path, ...]) -> IngestSummary:
    """Incremental sb-analysis ingest of run directories into `db` (only new lines are read)."""
    t0 = time.perf_counter()
    report = ingest(list(runs), db)
    return IngestSummary(
        str(db),
        len(report.runs),
        sum(sum(r.new_rows.values()) for r in report.runs),
        tuple(report.failures),
        len(report.row_errors),
        time.perf_counter() - t0,
    )


def refreshed_version(db: Path, runs: tuple[Path, ...], seen: DbVersion) -> DbVersion | None:
    """Ingest what the run directories appended (if any are followed); the new version if the database
    changed since `seen`, else None."""
    if runs:
        ingest_runs(db, runs)
    now = db_version(db)
    return None if now == seen else now


@st.cache_resource(show_spinner="Ingesting run directories ...")
def ingest_once(db: str, runs: tuple[str, ...]) -> IngestSummary:
    """The ingest at app start, once per server process (the sidebar's button runs it again)."""
    return ingest_runs(Path(db), tuple(Path(r) for r in runs))


# --- runs -------------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=16)
def runs(version: DbVersion) -> pl.DataFrame:
    """`run_summary`: one row per run with its key figures."""
    with _db(version) as db:
        return db.runs()


@st.cache_data(show_spinner=False, max_entries=64)
def run_info(version: DbVersion, run_id: str) -> dict:
    """The `runs` row of one run (layers, experts, top-k, preset, state ...)."""
    with _db(version) as db:
        frame = db.sql(
            "SELECT run_id, preset, state, num_layers, num_experts, top_k, total_steps, created_at, path "
            "FROM runs WHERE run_id = ?",
            [run_id],
        )
    if frame.is_empty():
        raise KeyError(f"run {run_id!r} is not in the database")
    return frame.row(0, named=True)


# --- losses -----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def train_curves(
    version: DbVersion, run_ids: tuple[str, ...], smooth: float | None, max_points: int = MAX_POINTS
) -> pl.DataFrame:
    """Training loss per run with time and tokens, EMA-smoothed (alpha = `smooth`) then downsampled."""
    if not run_ids:
        return pl.DataFrame()
    with _db(version) as db:
        frame = db.steps(list(run_ids), ["loss", "time_ms", "tokens"], smooth=smooth)
    frame = frame.filter(pl.col("loss").is_not_null())
    if frame.height > max_points * len(run_ids):
        frame = _downsample_last(frame, "run_id", max_points)
    return frame


@st.cache_data(show_spinner=False, max_entries=64)
def val_curves(version: DbVersion, run_ids: tuple[str, ...]) -> pl.DataFrame:
    """Validation points (sparse: no downsampling needed) with time and tokens."""
    if not run_ids:
        return pl.DataFrame()
    with _db(version) as db:
        return db.sql(
            "SELECT run_id, step, time_ms, tokens, val_loss FROM steps "
            "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND val_loss IS NOT NULL ORDER BY run_id, step",
            [list(run_ids)],
        )


def _downsample_last(frame: pl.DataFrame, by: str, max_points: int) -> pl.DataFrame:
    """Per group, keep each bucket's last row and add `<col>_min`/`<col>_max` of the numeric columns."""
    metrics = [c for c in frame.columns if c not in (by, "step") and frame[c].dtype.is_numeric()]
    parts = []
    for part in frame.partition_by(by, maintain_order=True):
        size = max(1, -(-part.height // max_points))
        parts.append(
            part.with_row_index("_i")
            .group_by(pl.col("_i") // size, maintain_order=True)
            .agg(
                [pl.col(c).last() for c in part.columns]
                + [pl.col(c).min().alias(f"{c}_min") for c in metrics]
                + [pl.col(c).max().alias(f"{c}_max") for c in metrics]
            )
            .drop("_i")
        )
    return pl.concat(parts) if parts else frame


# --- routing ----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def router_steps(version: DbVersion, run_id: str) -> list[int]:
    """Steps at which router metrics were logged (from the per-step aggregate table: one row a step)."""
    with _db(version) as db:
        frame = db.sql("SELECT step FROM router_steps WHERE run_id = ? ORDER BY step", [run_id])
    return frame["step"].to_list()


@st.cache_data(show_spinner=False, max_entries=128)
def expert_matrix(version: DbVersion, run_id: str, step: int, family: str) -> np.ndarray:
    """Layer x expert matrix of `family` (load = served, demand or importance) at one logged step.

    Layers that did not log the family are NaN rows."""
    if family not in ("load", "demand", "importance"):
        raise ValueError(f"family must be load, demand or importance, not {family!r}")
    with _db(version) as db:
        frame = db.sql(
            f"SELECT layer, {family} AS v FROM router_layers WHERE run_id = ? AND step = ? ORDER BY layer",
            [run_id, step],
        )
    if frame.is_empty():
        return np.zeros((0, 0))
    n_layers = int(frame["layer"].max()) + 1  # type: ignore[arg-type]
    n_experts = max((len(v) for v in frame["v"].to_list() if v is not None), default=0)
    out = np.full((n_layers, n_experts), np.nan)
    for layer, values in frame.iter_rows():
        if values is not None:
            out[layer, : len(values)] = np.asarray(values, dtype=float)
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def router_lines(version: DbVersion, run_id: str, max_points: int = MAX_POINTS) -> pl.DataFrame:
    """Per-layer router metrics over steps, as bucket means (at most `max_points` buckets per layer)."""
    cols = ", ".join(f"avg({m}) AS {m}" for m in ROUTER_LINE_METRICS)
    with _db(version) as db:
        return db.sql(
            f"""
            WITH b AS (
                SELECT min(step) AS lo, greatest(1, ceil((max(step) - min(step) + 1) / ?))::BIGINT AS size
                FROM router_layers WHERE run_id = ?
            )
            SELECT layer, min(step) AS step, max(step) AS step_last, {cols}
            FROM router_layer_metrics, b
            WHERE run_id = ?
            GROUP BY layer, (step - b.lo) // b.size
            ORDER BY layer, step
            """,
            [max_points, run_id, run_id],
        )


@st.cache_data(show_spinner=False, max_entries=64)
def schedule(version: DbVersion, run_id: str, max_points: int = MAX_POINTS) -> pl.DataFrame:
    """Expert-activation schedule, router temperature and logit cap over steps (downsampled)."""
    with _db(version) as db:
        frame = db.steps(run_id, list(SCHEDULE_COLUMNS))
    frame = frame.filter(pl.any_horizontal(pl.col(c).is_not_null() for c in SCHEDULE_COLUMNS))
    if frame.height > max_points:
        frame = _downsample_last(frame, "run_id", max_points)
    return frame


# --- health -----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def health(version: DbVersion, run_id: str) -> pl.DataFrame:
    """sb-analysis findings of a run, worst first."""
    with _db(version) as db:
        return db.health(run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def run_health_windows(version: DbVersion, run_id: str) -> pl.DataFrame:
    with _db(version) as db:
        return db.health_windows(run_id)


# --- domains ----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def domain_steps(version: DbVersion, run_id: str) -> list[int]:
    with _db(version) as db:
        frame = db.sql("SELECT DISTINCT step FROM domain_load WHERE run_id = ? ORDER BY step", [run_id])
    return frame["step"].to_list()


@st.cache_data(show_spinner=False, max_entries=64)
def domain_load(version: DbVersion, run_id: str, step: int) -> pl.DataFrame:
    """Per (layer, domain, expert): tokens, frac_of_domain and frac_of_expert at one step."""
    with _db(version) as db:
        return db.domain_load(run_id, step)


@st.cache_data(show_spinner=False, max_entries=64)
def domain_specialization(version: DbVersion, run_id: str) -> pl.DataFrame:
    """Per (step, layer): mutual information of domain and expert choice, normalised by H(domain)."""
    with _db(version) as db:
        return db.sql(
            "SELECT step, layer, mutual_info, specialization FROM domain_specialization "
            "WHERE run_id = ? ORDER BY layer, step",
            [run_id],
        )


# --- SQL --------------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=32)
def run_sql(version: DbVersion, query: str, limit: int = SQL_ROW_LIMIT) -> QueryResult:
    """One reading statement through sb-analysis's SQL sandbox (sandbox.py): anything that could write,
    attach, load or reconfigure is refused (RefusedStatement); at most `limit` rows are fetched and the
    query is stopped after LIMITS.timeout_s (QueryTimeout)."""
    with RunDB(version.path, limits=replace(LIMITS, max_rows=limit)) as db:
        return db.query(query)


@st.cache_data(show_spinner=False, max_entries=8)
def tables(version: DbVersion) -> pl.DataFrame:
    with _db(version) as db:
        return db.sql(
            "SELECT table_name AS name, table_type AS kind FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY table_type, table_name"
        )


# --- sweeps -----------------------------------------------------------------------------------------


def sweep_folders(version: DbVersion, roots: tuple[str, ...]) -> list[Path]:
    """Sweep folders (``<runs>/sweeps/<id>/sweep.json``, docs/log-format.md §11) under the --runs folders and
    next to the run folders the database was ingested from."""
    from sb_runlog import list_sweeps

    with _db(version) as db:
        paths = db.sql("SELECT DISTINCT path FROM runs WHERE source = 'csv'")["path"].to_list()
    parents = {str(Path(p).parent) for p in paths if p}
    return list_sweeps([*roots, *sorted(parents)])


@st.cache_data(show_spinner=False, max_entries=32)
def sweep_comparison(version: DbVersion, folder: str, baseline: str | None, alpha: float):
    """sb-analysis's judgement of the sweep (compare_sweep) from the runs in the database."""
    from sb_analysis.compare_sweep import compare_sweep

    with _db(version) as db:
        return compare_sweep(db.connection, Path(folder), baseline=baseline, alpha=alpha)


@st.cache_data(show_spinner=False, max_entries=32)
def sweep_curves(version: DbVersion, run_variant: tuple[tuple[str, str, int], ...],
                 value: str) -> pl.DataFrame:
    """One row per (variant, seed, step) of ``value`` ("val_loss" or "loss") for the sweep's runs."""
    if value not in ("val_loss", "loss"):
        raise ValueError(f"value must be val_loss or loss, not {value!r}")
    ids = [r for r, _, _ in run_variant]
    with _db(version) as db:
        frame = db.sql(f"SELECT run_id, step, {value} FROM steps "
                       f"WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND {value} IS NOT NULL "
                       "ORDER BY run_id, step", [ids])
    mapping = pl.DataFrame({"run_id": ids, "variant": [v for _, v, _ in run_variant],
                            "seed": [s for _, _, s in run_variant]}, schema={"run_id": pl.String,
                                                                              "variant": pl.String,
                                                                              "seed": pl.Int64})
    return frame.join(mapping, on="run_id")
