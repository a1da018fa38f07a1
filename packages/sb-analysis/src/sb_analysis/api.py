"""Python API for notebooks: a read-only handle on the database, every answer a polars DataFrame."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from .compare import DEFAULT_TARGET_LOSS, compare_runs
from .db import DEFAULT_DB
from .health import findings
from .sandbox import NO_LIMITS, Limits, QueryResult, check_statements, connect_read_only, run_query
from .views import window_query


class RunDB:
    """Read-only access to an sb-analysis database, through the SQL sandbox (sandbox.py): the connection
    cannot touch files, load extensions or change its settings, and `sql` runs only reading statements.

    >>> db = RunDB("runs.duckdb")
    >>> db.runs()                                  # one row per run, key figures
    >>> db.sql("SELECT run_id, min(val_loss) FROM steps GROUP BY ALL")
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_DB, timeout_s: float = 10.0, limits: Limits = NO_LIMITS
    ):
        self.path = Path(path)
        self.limits = limits
        self._con = connect_read_only(self.path, timeout_s=timeout_s, limits=limits)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> RunDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the sandboxed read-only connection (one per thread; file access stays off)."""
        return self._con.cursor()

    def sql(self, query: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        """One reading statement (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN, PRAGMA table_info ...) as a
        DataFrame; anything else raises sandbox.RefusedStatement with the reason."""
        return run_query(self._con, query, params, self.limits).frame

    def statements(self, query: str) -> list[str]:
        """The statements of `query`, each checked to only read (raises sandbox.RefusedStatement)."""
        return check_statements(self._con, query)

    def query(self, query: str, params: Sequence[object] | None = None) -> QueryResult:
        """Like `sql`, with the row cap and time limit of `limits`: frame, truncated, seconds."""
        return run_query(self._con, query, params, self.limits)

    def _query(self, query: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        """The API's own fixed queries (no row cap)."""
        return self._con.sql(query, params=list(params) if params else None).pl()

    def runs(self) -> pl.DataFrame:
        """Every run: state, size, final/best val loss, speed, final router-health score."""
        return self._query("SELECT * FROM run_summary ORDER BY created_at, run_id")

    def config(self, run_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """Config keys as columns (dotted names for nested keys), one row per run."""
        frame = self._query("SELECT * FROM runs_config ORDER BY run_id")
        return frame if run_ids is None else frame.filter(pl.col("run_id").is_in(list(run_ids)))

    def steps(
        self,
        run_ids: str | Sequence[str],
        columns: Sequence[str] | None = None,
        smooth: float | None = None,
        max_points: int | None = None,
    ) -> pl.DataFrame:
        """Per-step scalars of runs. `smooth` (0..1) adds debiased-EMA `<col>_smooth` columns;
        `max_points` downsamples each run to about that many rows, keeping each bucket's last row
        and adding `<col>_min` / `<col>_max` so spikes stay visible."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        cols = (
            "*"
            if columns is None
            else ", ".join(["run_id", "step", *[c for c in columns if c not in ("run_id", "step")]])
        )
        frame = self._query(
            f"SELECT {cols} FROM steps WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, step",
            [ids],
        )
        metrics = [c for c in frame.columns if c not in ("run_id", "step") and frame[c].dtype.is_numeric()]
        if smooth is not None:
            if not 0 < smooth <= 1:
                raise ValueError("smooth is the EMA weight of a new point, in (0, 1]")
            frame = frame.with_columns(
                [
                    pl.col(c)
                    .ewm_mean(alpha=smooth, adjust=True, ignore_nulls=True)
                    .over("run_id")
                    .alias(f"{c}_smooth")
                    for c in metrics
                ]
            )
        if max_points is not None and frame.height > max_points:
            frame = _downsample(frame, metrics, max_points)
        return frame

    def router(self, run_id: str, layer: int | None = None) -> pl.DataFrame:
        """Per (step, layer) router metrics with the derived columns (max_frac, active, health_score ...)."""
        where = "run_id = ?" + ("" if layer is None else " AND layer = ?")
        params: list[object] = [run_id] if layer is None else [run_id, layer]
        return self._query(f"SELECT * FROM router_layer_metrics WHERE {where} ORDER BY step, layer", params)

    def experts(self, run_id: str, step: int | None = None) -> pl.DataFrame:
        """Per (step, layer, expert) served load, demand and importance (the last logged step if None)."""
        if step is None:
            step = self._con.execute(
                "SELECT max(step) FROM router_layers WHERE run_id = ?", [run_id]
            ).fetchall()[0][0]
        return self._query(
            "SELECT * FROM router_experts WHERE run_id = ? AND step = ? ORDER BY layer, expert",
            [run_id, step],
        )

    def health(self, run_id: str, window: int | None = None) -> pl.DataFrame:
        """Router-health findings of a run, worst first (severity bad / warn / info / ok)."""
        check_window(window)
        self._require_run(run_id)
        return findings(self._con, run_id, window=window)

    def _require_run(self, run_id: str) -> None:
        if not self._con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
            rows = self._con.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 20").fetchall()
            known = [r for (r,) in rows]
            raise KeyError(f"run {run_id!r} is not in {self.path}; known runs: {', '.join(known) or 'none'}")

    def health_windows(self, run_id: str, window: int | None = None, per_layer: bool = False) -> pl.DataFrame:
        """Window aggregates of the guide's metrics and the composite score (per run or per layer)."""
        check_window(window)
        order = "layer, window_idx" if per_layer else "window_idx"
        query = window_query(per_layer=per_layer, window=window, run_id=run_id)
        return self._query(f"SELECT * FROM ({query}) ORDER BY {order}")

    def compare(self, run_ids: Sequence[str], target_loss: float = DEFAULT_TARGET_LOSS) -> pl.DataFrame:
        return compare_runs(self._con, run_ids, target_loss)

    def domain_load(self, run_id: str, step: int | None = None) -> pl.DataFrame:
        """Per-expert load per data domain (empty when the run logged no domains.csv)."""
        if step is None:
            step = self._con.execute(
                "SELECT max(step) FROM domain_load WHERE run_id = ?", [run_id]
            ).fetchall()[0][0]
        return self._query(
            "SELECT * FROM domain_expert_load WHERE run_id = ? AND step = ? ORDER BY layer, domain, expert",
            [run_id, step],
        )

    def errors(self, run_id: str | None = None) -> pl.DataFrame:
        """Rows that could not be loaded, with file and line."""
        if run_id is None:
            return self._query("SELECT * FROM ingest_errors ORDER BY run_id, path, line")
        return self._query("SELECT * FROM ingest_errors WHERE run_id = ? ORDER BY path, line", [run_id])


def check_window(window: int | None) -> None:
    """A health window is a positive whole number of steps (None: a tenth of the run)."""
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"window must be a positive number of steps, not {window!r} (leave it out for a "
                         "tenth of the run)")


def _downsample(frame: pl.DataFrame, metrics: list[str], max_points: int) -> pl.DataFrame:
    out = []
    for part in frame.partition_by("run_id", maintain_order=True):
        size = max(1, -(-part.height // max_points))
        bucketed = part.with_row_index("_i").with_columns((pl.col("_i") // size).alias("_bucket"))
        agg = bucketed.group_by("_bucket", maintain_order=True).agg(
            [pl.col(c).last() for c in part.columns]
            + [pl.col(c).min().alias(f"{c}_min") for c in metrics]
            + [pl.col(c).max().alias(f"{c}_max") for c in metrics]
        )
        out.append(agg.drop("_bucket"))
    return pl.concat(out)
