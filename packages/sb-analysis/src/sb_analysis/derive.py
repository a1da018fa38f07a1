"""Router metrics derived at ingest time, so that queries over many runs stay fast.

Per (step, layer) row: the guide's quantities (max_frac, active experts, busiest expert, demanded max),
missing scalars filled from the vectors, the collapse rule and the reference's composite score. Per step:
the layer aggregates the guide and the reference use (`router_steps`). Per run: the cached health summary.
All three are computed only for the rows an ingest adds, which keeps re-ingests incremental.
"""

from __future__ import annotations

import duckdb
from sb_runlog.health_thresholds import COLLAPSE_ACTIVE_MAX, COLLAPSE_MAX_FRAC, HEALTH_PENALTY_WEIGHTS

from .loader import quote_ident

_W = HEALTH_PENALTY_WEIGHTS
MACROS = f"""
CREATE OR REPLACE MACRO sb_nz(x) AS CASE WHEN x IS NULL OR isnan(x) THEN 0.0 ELSE x END;
CREATE OR REPLACE MACRO sb_entropy_gap(a, h) AS
    CASE WHEN a > 1 THEN greatest(0.0, abs(ln(a) - h) / ln(a)) END;
CREATE OR REPLACE MACRO sb_health_penalty(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac, a, e) AS
    {_W["imp_cv2"]} * sb_nz(imp_cv2 / a) + {_W["load_cv2"]} * sb_nz(load_cv2 / a)
    + {_W["load_entropy_gap"]} * sb_nz(sb_entropy_gap(a, load_entropy))
    + {_W["imp_entropy_gap"]} * sb_nz(sb_entropy_gap(a, imp_entropy))
    + {_W["usage_gap"]} * sb_nz(abs(usage_frac - least(1.0, a / e)));
"""

# columns of router_layers computed here (besides filling imp_cv2, load_cv2, usage_frac, *_entropy)
DERIVED_LAYER_COLUMNS = {
    "n_experts": "INTEGER",
    "max_frac": "DOUBLE",
    "top_expert": "INTEGER",
    "frac_dem_max": "DOUBLE",
    "active": "INTEGER",
    "collapsed_rule": "BOOLEAN",
    "health_penalty": "DOUBLE",
    "health_score": "DOUBLE",
}
INPUT_COLUMNS = {
    "imp_cv2": "DOUBLE",
    "load_cv2": "DOUBLE",
    "usage_frac": "DOUBLE",
    "imp_entropy": "DOUBLE",
    "load_entropy": "DOUBLE",
    "topk_prob_mean": "DOUBLE",
    "entropy_mean": "DOUBLE",
    "drop_frac": "DOUBLE",
    "aux_loss": "DOUBLE",
    "load": "DOUBLE[]",
    "demand": "DOUBLE[]",
    "importance": "DOUBLE[]",
}

DERIVE_LAYERS = f"""
WITH base AS (
    SELECT * EXCLUDE ({", ".join(DERIVED_LAYER_COLUMNS)}),
        coalesce($n_experts::INTEGER, len(load), len(importance))::INTEGER AS n_experts,
        list_max(load) AS max_frac,
        (list_position(load, list_max(load)) - 1)::INTEGER AS top_expert,
        len(list_filter(load, lambda x: x > 0)) AS n_loaded,
        list_max(demand) AS frac_dem_max,
        list_sum(importance) AS imp_total
    FROM {{source}}
), filled AS (
    SELECT * REPLACE (
        coalesce(imp_cv2, list_aggregate(importance, 'var_pop') / pow(list_avg(importance), 2)) AS imp_cv2,
        coalesce(load_cv2, list_aggregate(load, 'var_pop') / pow(list_avg(load), 2)) AS load_cv2,
        coalesce(usage_frac, n_loaded / n_experts) AS usage_frac,
        coalesce(load_entropy,
            -list_sum(list_transform(load, lambda x: CASE WHEN x > 0 THEN x * ln(x) ELSE 0.0 END)))
            AS load_entropy,
        coalesce(imp_entropy, -list_sum(list_transform(importance,
            lambda x: CASE WHEN x > 0 THEN (x / imp_total) * ln(x / imp_total) ELSE 0.0 END)))
            AS imp_entropy),
        coalesce(n_loaded, round(usage_frac * n_experts))::INTEGER AS active
    FROM base
)
SELECT * EXCLUDE (n_loaded, imp_total),
    (max_frac >= {COLLAPSE_MAX_FRAC} OR active <= {COLLAPSE_ACTIVE_MAX}) AS collapsed_rule,
    sb_health_penalty(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac,
        greatest(active, 1), n_experts) AS health_penalty,
    1.0 / (1.0 + sb_health_penalty(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac,
        greatest(active, 1), n_experts)) AS health_score
FROM filled
"""

STEP_AGGREGATE = f"""
WITH agg AS (
    SELECT run_id, step,
        count(*) AS n_layers,
        any_value(n_experts) AS n_experts,
        avg(topk_prob_mean) AS top1_p_mean,
        avg(max_frac) AS max_frac_mean,
        max(max_frac) AS max_frac_max,
        avg(max_frac) AS frac_srv_max,
        avg(frac_dem_max) AS frac_dem_max,
        avg(entropy_mean) AS entropy_mean,
        min(active) AS active_min,
        avg(drop_frac) AS drop_frac_mean,
        avg(aux_loss) AS aux_mean,
        count(*) FILTER (WHERE collapsed_rule) AS collapsed_layers,
        avg(imp_cv2) AS imp_cv2, avg(load_cv2) AS load_cv2, avg(usage_frac) AS usage_frac,
        avg(imp_entropy) AS imp_entropy, avg(load_entropy) AS load_entropy,
        greatest(avg(active), 1.0) AS active_mean
    FROM {{source}}
    GROUP BY run_id, step
)
SELECT agg.*,
    (max_frac_max >= {COLLAPSE_MAX_FRAC} OR active_min <= {COLLAPSE_ACTIVE_MAX}) AS collapsed,
    sb_health_penalty(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac, active_mean, n_experts)
        AS health_penalty,
    1.0 / (1.0 + sb_health_penalty(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac, active_mean,
        n_experts)) AS health_score
FROM agg
"""


def create_router_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Macros, derived columns of router_layers, and the router_steps table (idempotent)."""
    con.execute(MACROS)
    have = {row[0] for row in con.execute("DESCRIBE router_layers").fetchall()}
    for name, typ in DERIVED_LAYER_COLUMNS.items():
        if name not in have:
            con.execute(f"ALTER TABLE router_layers ADD COLUMN {name} {typ}")
    con.execute(
        "CREATE TABLE IF NOT EXISTS router_steps AS "
        + STEP_AGGREGATE.format(source="(SELECT * FROM router_layers WHERE false)")
    )


def derived_select(relation: str, columns: set[str], n_experts: int | None) -> str:
    """SELECT that turns router rows (a table name or a parenthesised query with these columns) into
    their derived form; absent inputs are treated as NULL."""
    missing = [
        f"NULL::{typ} AS {quote_ident(name)}"
        for name, typ in {**INPUT_COLUMNS, **DERIVED_LAYER_COLUMNS}.items()
        if name not in columns
    ]
    source = f"(SELECT *{''.join(', ' + m for m in missing)} FROM {relation})"
    experts = "NULL" if n_experts is None else str(int(n_experts))
    return DERIVE_LAYERS.replace("$n_experts", experts).format(source=source)


def derive_layers(con: duckdb.DuckDBPyConnection, staged: str, n_experts: int | None) -> None:
    """Replace the staged router rows by their derived form (adds the columns listed above)."""
    have = {row[0] for row in con.execute(f"DESCRIBE {staged}").fetchall()}
    query = derived_select(staged, have, n_experts)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {staged}_derived AS {query}")
    con.execute(f"DROP TABLE {staged}")
    con.execute(f"ALTER TABLE {staged}_derived RENAME TO {staged}")


def refresh_router_steps(con: duckdb.DuckDBPyConnection, staged: str, fresh: bool = False) -> None:
    """Recompute router_steps for the (run_id, step) pairs of `staged` (already upserted).

    `fresh`: the runs had no router rows before this batch, so the staged rows are all there is.
    """
    if fresh:
        con.execute("INSERT INTO router_steps BY NAME " + STEP_AGGREGATE.format(source=staged))
        return
    con.execute(f"CREATE OR REPLACE TEMP TABLE _sb_keys AS SELECT DISTINCT run_id, step FROM {staged}")
    con.execute("DELETE FROM router_steps t USING _sb_keys k WHERE t.run_id = k.run_id AND t.step = k.step")
    con.execute(
        "INSERT INTO router_steps BY NAME "
        + STEP_AGGREGATE.format(source="router_layers SEMI JOIN _sb_keys USING (run_id, step)")
    )
    con.execute("DROP TABLE _sb_keys")


def rebuild_all(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute every derived router column and router_steps (after a change of these definitions)."""
    if not con.execute("SELECT count(*) FROM router_layers").fetchall()[0][0]:
        return
    runs = con.execute(
        "SELECT r.run_id, any_value(u.num_experts) FROM router_layers r LEFT JOIN runs u USING (run_id) "
        "GROUP BY r.run_id"
    ).fetchall()
    for run_id, n_experts in runs:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _sb_all AS SELECT * FROM router_layers WHERE run_id = ?", [run_id]
        )
        derive_layers(con, "_sb_all", n_experts)
        con.execute("DELETE FROM router_layers WHERE run_id = ?", [run_id])
        con.execute("INSERT INTO router_layers BY NAME SELECT * FROM _sb_all")
        con.execute("DELETE FROM router_steps WHERE run_id = ?", [run_id])
        refresh_router_steps(con, "_sb_all")
        con.execute("DROP TABLE _sb_all")
