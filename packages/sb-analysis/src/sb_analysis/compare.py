"""Side-by-side comparison of runs: losses, speed, time to a target loss, router health."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

DEFAULT_TARGET_LOSS = 2.92  # the GPT-2-medium speedrun target (docs/design/presets.md)

COMPARE_SQL = """
WITH target AS (
    SELECT run_id,
        min(step) AS target_step,
        arg_min(time_ms, step) AS target_time_ms,
        arg_min(tokens, step) AS target_tokens
    FROM steps
    WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND val_loss <= ?
    GROUP BY run_id
)
SELECT s.run_id, s.preset, s.state, s.last_step AS steps, s.total_steps,
    s.final_val_loss, s.best_val_loss, s.best_val_step, s.final_train_loss,
    s.tokens, s.time_ms / 60000.0 AS train_time_min, s.tokens_per_s,
    t.target_step, t.target_time_ms / 60000.0 AS target_time_min, t.target_tokens,
    s.health_score_final, s.health_score_mean, s.collapsed_layers_final, s.clipped_frac
FROM run_summary s LEFT JOIN target t USING (run_id)
WHERE s.run_id IN (SELECT unnest(?::VARCHAR[]))
"""


def compare_runs(
    con: duckdb.DuckDBPyConnection, run_ids: Sequence[str], target_loss: float = DEFAULT_TARGET_LOSS
) -> pl.DataFrame:
    """One row per run, in the order given. Unknown run ids raise KeyError naming them."""
    ids = list(run_ids)
    frame = con.sql(COMPARE_SQL, params=[ids, target_loss, ids]).pl()
    missing = [r for r in ids if r not in set(frame["run_id"].to_list())]
    if missing:
        known = [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 20").fetchall()]
        raise KeyError(f"run(s) not in the database: {', '.join(missing)}; known runs: {', '.join(known)}")
    order = {run_id: i for i, run_id in enumerate(ids)}
    return (
        frame.with_columns(pl.col("run_id").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order")
        .drop("_order")
    )


def side_by_side(frame: pl.DataFrame) -> pl.DataFrame:
    """Transpose a compare frame: one row per metric, one column per run (values as text)."""
    columns = [c for c in frame.columns if c != "run_id"]
    out: dict[str, list[str]] = {"metric": columns}
    for row in frame.iter_rows(named=True):
        out[str(row["run_id"])] = [_fmt(row[c]) for c in columns]
    return pl.DataFrame(out)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1e5:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
