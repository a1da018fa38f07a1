"""Derived views: router metrics per layer/step, router health per window, run summaries, domains.

Thresholds are those of the router-metrics guide (docs/log-format.md §7); the composite score is the
reference's `router/health_score` = 1 / (1 + penalty).
"""

from __future__ import annotations

import hashlib
import json

import duckdb

from .derive import DERIVE_LAYERS, MACROS, STEP_AGGREGATE, rebuild_all

WINDOWS_PER_RUN = 10

ROUTER_LAYER_METRICS = """
CREATE OR REPLACE VIEW router_layer_metrics AS
SELECT *, max_frac AS frac_srv_max FROM router_layers
"""

ROUTER_STEP_HEALTH = """
CREATE OR REPLACE VIEW router_step_health AS
SELECT h.*, s.router_clipped FROM router_steps h LEFT JOIN steps s USING (run_id, step)
"""


def _window_expr(window: str) -> str:
    """SQL for a window index column; `window` is a step count or the per-run default."""
    return f"((step - bounds.min_step) // ({window}))"


def _default_window() -> str:
    return f"greatest(1, ceil((bounds.max_step - bounds.min_step + 1) / {WINDOWS_PER_RUN})::BIGINT)"


def _bounds(source: str) -> str:
    return (
        f"(SELECT run_id, min(step) AS min_step, max(step) AS max_step FROM {source} GROUP BY run_id) bounds"
    )


def _filtered(source: str, run_id: str | None) -> str:
    if run_id is None:
        return source
    return f"(SELECT * FROM {source} WHERE run_id = '{run_id.replace(chr(39), chr(39) * 2)}')"


def window_query(per_layer: bool, window: int | None = None, run_id: str | None = None) -> str:
    """The window-health SQL for one run (computed for that run only), with a fixed or default window."""
    size = str(int(window)) if window else _default_window()
    return layer_window_sql(size, run_id) if per_layer else run_window_sql(size, run_id)


def run_window_sql(window: str, run_id: str | None = None) -> str:
    source = _filtered("router_step_health", run_id)
    return f"""
    SELECT h.run_id, {_window_expr(window)} AS window_idx, min(step) AS step_from, max(step) AS step_to,
        count(*) AS n_steps,
        avg(top1_p_mean) AS top1_p_mean, avg(max_frac_mean) AS max_frac_mean,
        avg(max_frac_max) AS max_frac_max, max(max_frac_max) AS max_frac_peak,
        avg(entropy_mean) AS entropy_mean, min(active_min) AS active_min,
        avg((active_min <= 2)::DOUBLE) AS active_low_frac,
        avg(frac_dem_max - frac_srv_max) AS dem_srv_gap, avg(drop_frac_mean) AS drop_frac_mean,
        avg(collapsed::DOUBLE) AS collapsed_frac, avg(router_clipped::DOUBLE) AS clipped_frac,
        avg(health_score) AS health_score, any_value(n_experts) AS n_experts
    FROM {source} h JOIN {_bounds(source)} USING (run_id)
    GROUP BY h.run_id, window_idx
    """


def layer_window_sql(window: str, run_id: str | None = None) -> str:
    source = _filtered("router_layer_metrics", run_id)
    return f"""
    SELECT m.run_id, layer, {_window_expr(window)} AS window_idx,
        min(step) AS step_from, max(step) AS step_to,
        count(*) AS n_steps,
        avg(topk_prob_mean) AS top1_p_mean, avg(max_frac) AS max_frac_mean, max(max_frac) AS max_frac_peak,
        avg(entropy_mean) AS entropy_mean, min(active) AS active_min,
        avg(collapsed_rule::DOUBLE) AS collapsed_frac, mode(top_expert) AS top_expert,
        avg(frac_dem_max - frac_srv_max) AS dem_srv_gap,
        avg(health_score) AS health_score, any_value(n_experts) AS n_experts
    FROM {source} m JOIN {_bounds(source)} USING (run_id)
    GROUP BY m.run_id, layer, window_idx
    """


ROUTER_EXPERTS = """
CREATE OR REPLACE VIEW router_experts AS
SELECT run_id, step, layer,
    unnest(range(coalesce(len(load), len(importance), len(demand)))) AS expert,
    unnest(load) AS load, unnest(demand) AS demand, unnest(importance) AS importance
FROM router_layers
"""

RUN_HEALTH = """
CREATE OR REPLACE VIEW run_health_live AS
WITH last_window AS (
    SELECT run_id, max(window_idx) AS window_idx FROM router_window_health GROUP BY run_id
), final_layers AS (
    SELECT l.run_id,
        count(*) FILTER (WHERE l.collapsed_frac >= 0.5) AS collapsed_layers_final,
        min(l.health_score) AS worst_layer_score_final,
        arg_min(l.layer, l.health_score) AS worst_layer_final
    FROM router_layer_window_health l JOIN last_window USING (run_id, window_idx)
    GROUP BY l.run_id
)
SELECT w.run_id,
    avg(s.health_score) AS health_score_mean,
    any_value(f.health_score) AS health_score_final,
    avg(s.collapsed::DOUBLE) AS collapsed_step_frac,
    avg(s.router_clipped::DOUBLE) AS clipped_frac,
    any_value(fl.collapsed_layers_final) AS collapsed_layers_final,
    any_value(fl.worst_layer_final) AS worst_layer_final,
    any_value(fl.worst_layer_score_final) AS worst_layer_score_final
FROM last_window w
JOIN router_step_health s ON s.run_id = w.run_id
JOIN router_window_health f ON f.run_id = w.run_id AND f.window_idx = w.window_idx
LEFT JOIN final_layers fl ON fl.run_id = w.run_id
GROUP BY w.run_id
"""

RUN_SUMMARY = """
CREATE OR REPLACE VIEW run_summary AS
WITH s AS (
    SELECT run_id,
        max(step) AS last_step,
        max(tokens) AS tokens,
        max(step) FILTER (WHERE loss IS NOT NULL) + 1 AS trained_steps,
        max(time_ms) AS time_ms,
        arg_max(val_loss, step) FILTER (WHERE val_loss IS NOT NULL AND NOT isnan(val_loss)) AS final_val_loss,
        min(val_loss) FILTER (WHERE NOT isnan(val_loss)) AS best_val_loss,
        arg_min(step, val_loss) FILTER (WHERE val_loss IS NOT NULL AND NOT isnan(val_loss)) AS best_val_step,
        arg_max(loss, step) FILTER (WHERE loss IS NOT NULL) AS final_train_loss,
        count(val_loss) AS n_val
    FROM steps GROUP BY run_id
)
SELECT r.run_id, r.source, r.preset, r.state, r.num_layers, r.num_experts, r.total_steps,
    s.last_step, coalesce(s.tokens, s.trained_steps * r.tokens_per_step) AS tokens, s.time_ms,
    coalesce(s.tokens, s.trained_steps * r.tokens_per_step) / nullif(s.time_ms / 1000.0, 0) AS tokens_per_s,
    s.final_train_loss, s.final_val_loss, s.best_val_loss, s.best_val_step, s.n_val,
    h.health_score_final, h.health_score_mean, h.collapsed_layers_final, h.clipped_frac,
    r.config_hash, r.created_at
FROM runs r LEFT JOIN s USING (run_id) LEFT JOIN run_health h USING (run_id)
"""


def _views_fingerprint() -> str:
    text = "".join(
        [
            MACROS,
            DERIVE_LAYERS,
            STEP_AGGREGATE,
            ROUTER_LAYER_METRICS,
            ROUTER_STEP_HEALTH,
            ROUTER_EXPERTS,
            RUN_HEALTH,
            RUN_SUMMARY,
            DOMAIN_VIEWS_SQL,
            run_window_sql("w"),
            layer_window_sql("w"),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the derived views (once per definition version; a new version rebuilds derived data)."""
    fingerprint = _views_fingerprint()
    rows = con.execute("SELECT value FROM sb_meta WHERE key = 'views'").fetchall()
    if rows and rows[0][0] == fingerprint:
        return
    if rows:  # definitions changed since this database was written: recompute what was derived
        con.execute("DROP TABLE IF EXISTS run_health")
    _create_all_views(con)
    if rows:
        rebuild_all(con)
        con.execute("INSERT INTO run_health SELECT * FROM run_health_live")
    con.execute("INSERT OR REPLACE INTO sb_meta VALUES ('views', ?)", [fingerprint])


def refresh_run_health(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Recompute the cached health summary of these runs."""
    con.execute("DELETE FROM run_health WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [run_ids])
    con.execute(
        "INSERT INTO run_health SELECT * FROM run_health_live WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [run_ids],
    )


def _create_all_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(MACROS)
    con.execute(ROUTER_LAYER_METRICS)
    con.execute(ROUTER_STEP_HEALTH)
    con.execute(ROUTER_EXPERTS)
    con.execute(f"CREATE OR REPLACE VIEW router_window_health AS {run_window_sql(_default_window())}")
    con.execute(f"CREATE OR REPLACE VIEW router_layer_window_health AS {layer_window_sql(_default_window())}")
    con.execute(f"CREATE OR REPLACE MACRO router_window_health_w(w) AS TABLE {run_window_sql('w')}")
    con.execute(f"CREATE OR REPLACE MACRO router_layer_window_health_w(w) AS TABLE {layer_window_sql('w')}")
    con.execute(RUN_HEALTH)
    con.execute("CREATE TABLE IF NOT EXISTS run_health AS SELECT * FROM run_health_live LIMIT 0")
    con.execute(RUN_SUMMARY)
    con.execute(DOMAIN_VIEWS_SQL)


DOMAIN_VIEWS_SQL = """
CREATE OR REPLACE VIEW domain_expert_load AS
SELECT run_id, step, layer, domain, expert, tokens,
    tokens / nullif(sum(tokens) OVER (PARTITION BY run_id, step, layer, domain), 0) AS frac_of_domain,
    tokens / nullif(sum(tokens) OVER (PARTITION BY run_id, step, layer, expert), 0) AS frac_of_expert
FROM domain_load;
CREATE OR REPLACE VIEW domain_specialization AS
-- per (run, step, layer): NMI = I(domain; expert) / min(H(domain), H(expert)), docs/log-format.md §5 (the
-- definition of sb_runlog.domain_expert_nmi): NULL with fewer than two domains, 0 when H(expert) = 0
WITH t AS (
    SELECT run_id, step, layer, domain, expert, tokens::DOUBLE AS tokens,
        sum(tokens) OVER (PARTITION BY run_id, step, layer) AS total,
        sum(tokens) OVER (PARTITION BY run_id, step, layer, domain) AS dom_total,
        sum(tokens) OVER (PARTITION BY run_id, step, layer, expert) AS exp_total
    FROM domain_load WHERE tokens > 0
), dom AS (
    SELECT DISTINCT run_id, step, layer, domain, dom_total / total AS p FROM t
), ex AS (
    SELECT DISTINCT run_id, step, layer, expert, exp_total / total AS p FROM t
), hd AS (
    SELECT run_id, step, layer, -sum(p * ln(p)) AS domain_entropy, count(*) AS n_domains FROM dom GROUP BY ALL
), hx AS (
    SELECT run_id, step, layer, -sum(p * ln(p)) AS expert_entropy FROM ex GROUP BY ALL
), mi AS (
    SELECT run_id, step, layer,
        sum((tokens / total) * ln(tokens * total / (dom_total * exp_total))) AS mutual_info
    FROM t GROUP BY ALL
)
SELECT run_id, step, layer, mutual_info, domain_entropy, expert_entropy,
    CASE WHEN n_domains < 2 THEN NULL
         WHEN least(domain_entropy, expert_entropy) <= 0 THEN 0.0
         ELSE greatest(0.0, least(1.0, mutual_info / least(domain_entropy, expert_entropy)))
    END AS specialization
FROM mi JOIN hd USING (run_id, step, layer) JOIN hx USING (run_id, step, layer)
"""


def _config_column_type(values: list[object]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {bool}:
        return "BOOLEAN"
    if kinds and kinds <= {int}:
        return "BIGINT"
    if kinds and kinds <= {int, float}:
        return "DOUBLE"
    return "VARCHAR"


def refresh_config_view(con: duckdb.DuckDBPyConnection) -> None:
    """`runs_config`: one row per run, one typed column per config key (dotted names, quoted)."""
    rows = con.execute("SELECT key, value FROM run_config").fetchall()
    values: dict[str, list[object]] = {}
    for key, value in rows:
        values.setdefault(key, []).append(json.loads(value) if value is not None else None)
    columns = []
    for key in sorted(values):
        if key.lower() == "run_id":
            continue
        typ = _config_column_type(values[key])
        quoted = key.replace("'", "''")
        ident = '"' + key.replace('"', '""') + '"'
        picked = f"(any_value(c.value) FILTER (WHERE c.key = '{quoted}'))"
        expr = f"({picked} ->> '$')" if typ == "VARCHAR" else f"{picked}::{typ}"
        columns.append(f"{expr} AS {ident}")
    select = ", ".join(["r.run_id", *columns])
    con.execute(
        f"CREATE OR REPLACE VIEW runs_config AS SELECT {select} "
        "FROM runs r LEFT JOIN run_config c USING (run_id) GROUP BY r.run_id"
    )
