"""Loading planned CSV reads into DuckDB: declared schema, bad rows reported, appends only.

Each planned file (see `csv_plan`) is read with its declared column types; DuckDB's `store_rejects`
keeps the good rows and tells which lines were bad. After the read, each file's state (bytes and lines
done, rows loaded) is recorded in `ingest_files` for the next incremental ingest.

For speed, files that share a header (the same trainer version writes the same columns) are read in one
`read_csv` call over the list of files; each file is still typed by the same declared schema, and bad
rows are still attributed to their own file and line. The first read of a run's table inserts straight
into the table (no staging, no upsert); only runs whose file repeats or lacks a key go through the staged
upsert.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
from sb_runlog import expert_counts

from .csv_plan import FilePlan, RowError
from .db import DB_TABLES
from .derive import derived_select, refresh_router_steps
from .loader import ensure_columns, has_rows_for_run_ids, has_rows_for_runs, quote_ident, upsert_staged


def _prepare_source(plan: FilePlan) -> None:
    """The file DuckDB reads: the file itself, or a temp copy of header + the new complete lines."""
    if plan.start == len(plan.header_bytes) and plan.complete_end == plan.size:
        plan.source = str(plan.path)
        return
    fd, tmp_path = tempfile.mkstemp(suffix=".csv", prefix="sb-analysis-")
    with os.fdopen(fd, "wb") as out, open(plan.path, "rb") as src:
        out.write(plan.header_bytes)
        src.seek(plan.start)
        remaining = plan.complete_end - plan.start
        while remaining > 0:
            chunk = src.read(min(remaining, 1 << 24))
            out.write(chunk)
            remaining -= len(chunk)
    plan.source, plan.tmp = tmp_path, True


def load_plans(con: duckdb.DuckDBPyConnection, plans: Sequence[FilePlan]) -> None:
    """Read every planned file, batched by (segment, table, header, experts), and record file states."""
    to_read = [p for p in plans if p.start < p.complete_end]
    groups: dict[tuple, list[FilePlan]] = {}
    for plan in sorted(to_read, key=lambda p: p.segment):
        groups.setdefault((plan.segment, plan.spec.name, plan.header_text, plan.n_experts), []).append(plan)
    try:
        for group in groups.values():
            for plan in group:
                _prepare_source(plan)
            _load_group(con, group)
    finally:
        for plan in to_read:
            if plan.tmp and plan.source:
                Path(plan.source).unlink(missing_ok=True)
    if plans:
        con.execute(
            "DELETE FROM ingest_files t USING (SELECT unnest(?::VARCHAR[]) AS run_id, "
            "unnest(?::VARCHAR[]) AS path) k WHERE t.run_id = k.run_id AND t.path = k.path",
            [[p.run_id for p in plans], [str(p.path) for p in plans]],
        )
        _insert_states(con, plans)


def _insert_states(con: duckdb.DuckDBPyConnection, plans: Sequence[FilePlan]) -> None:
    columns = {
        "run_id": [p.run_id for p in plans],
        "path": [str(p.path) for p in plans],
        "kind": [p.spec.name for p in plans],
        "header": [p.header_text for p in plans],
        "bytes_done": [p.complete_end for p in plans],
        "lines_done": [p.lines_before + p.new_lines for p in plans],
        "rows_loaded": [p.rows_before + p.result.new_rows + p.result.replaced_rows for p in plans],
        "file_size": [p.size for p in plans],
    }
    con.execute(
        "INSERT INTO ingest_files SELECT *, now() FROM (SELECT "
        + ", ".join(
            f"unnest(?::{t}[]) AS {n}"
            for n, t in (
                ("run_id", "VARCHAR"),
                ("path", "VARCHAR"),
                ("kind", "VARCHAR"),
                ("header", "VARCHAR"),
                ("bytes_done", "BIGINT"),
                ("lines_done", "BIGINT"),
                ("rows_loaded", "BIGINT"),
                ("file_size", "BIGINT"),
            )
        )
        + ")",
        list(columns.values()),
    )


def _load_group(con: duckdb.DuckDBPyConnection, group: Sequence[FilePlan]) -> None:
    spec = group[0].spec
    ensure_columns(con, DB_TABLES[spec.name], group[0].needed)
    if has_rows_for_run_ids(con, DB_TABLES[spec.name], [p.run_id for p in group]):
        _load_staged(con, group)
        return
    redo = _load_fresh(con, group)
    if redo:
        _load_staged(con, redo)


def _read_query(con: duckdb.DuckDBPyConnection, group: Sequence[FilePlan]) -> str:
    """The SELECT reading the group's files with the declared schema (router rows already derived).

    Its rows carry `run_id` and `_sb_file`; bad rows land in `_sb_rejects` / `_sb_rejects_scan`.
    """
    first = group[0]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _sb_files AS SELECT unnest(?::VARCHAR[]) AS _sb_source, "
        "unnest(?::VARCHAR[]) AS _sb_run_id",
        [[p.source for p in group], [p.run_id for p in group]],
    )
    columns_sql = "{" + ", ".join(f"'{name}': '{typ}'" for name, typ in first.types.items()) + "}"
    con.execute("DROP TABLE IF EXISTS _sb_rejects")
    con.execute("DROP TABLE IF EXISTS _sb_rejects_scan")
    files = "[" + ", ".join("'" + str(p.source).replace("'", "''") + "'" for p in group) + "]"
    query = (
        f"SELECT {first.select} FROM read_csv({files}, header = true, "
        f"auto_detect = false, columns = {columns_sql}, delim = ',', quote = '\"', escape = '\"', "
        "filename = '_sb_file', store_rejects = true, rejects_table = '_sb_rejects', "
        "rejects_scan = '_sb_rejects_scan') c JOIN _sb_files f ON c._sb_file = f._sb_source"
    )
    if first.spec.name == "router":  # parse and derive in one pass
        columns = {"run_id", "_sb_file", *first.needed, *expert_counts(list(first.types))}
        query = derived_select(f"({query})", columns, first.n_experts)
    return query


def _collect_rejects(con: duckdb.DuckDBPyConnection, by_source: Mapping[str | None, FilePlan]) -> None:
    """Bad rows of the last read, as RowErrors of the plans in `by_source` (others are ignored)."""
    # DuckDB reports one reject per bad cell (e.g. one per missing column); keep the first per line
    rejects = con.execute(
        "SELECT s.file_path, r.line, r.column_name, r.error_type, r.csv_line, r.error_message "
        "FROM _sb_rejects r JOIN _sb_rejects_scan s USING (scan_id, file_id) "
        "QUALIFY row_number() OVER (PARTITION BY s.file_path, r.line ORDER BY r.column_idx) = 1 "
        "ORDER BY s.file_path, r.line"
    ).fetchall()
    for source, line, column, etype, raw, message in rejects:
        plan = by_source.get(source)
        if plan is None:
            continue
        plan.result.errors.append(
            RowError(str(plan.path), int(line) + plan.lines_before - 1, str(etype), str(message), column, raw)
        )


def _load_fresh(con: duckdb.DuckDBPyConnection, group: Sequence[FilePlan]) -> list[FilePlan]:
    """First read of these runs' table: insert straight into the table, without staging or upsert.

    The keys are checked afterwards; a run whose rows have an empty or duplicate key (a resumed run logs
    steps again) is taken out again and returned, to be loaded by the staged path (which reports empty keys
    and keeps the last row per key). Returns those plans.
    """
    spec = group[0].spec
    table = DB_TABLES[spec.name]
    query = _read_query(con, group)
    con.execute("SET preserve_insertion_order = false")  # row order in the table does not matter
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (_sb_file) FROM ({query})")
    finally:
        con.execute("RESET preserve_insertion_order")
    # equal keys have equal hashes, so a hash collision can only send a clean run to the staged path
    key_hash = "hash(" + ", ".join(quote_ident(k) for k in spec.key) + ")"
    null_sql = " OR ".join(f"{quote_ident(k)} IS NULL" for k in spec.key)
    by_run = {p.run_id: p for p in group}  # one file per run in a group (same segment, same table)
    counts = con.execute(
        f"SELECT run_id, count(*), count(DISTINCT {key_hash}), count(*) FILTER (WHERE {null_sql}) "
        f"FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY run_id",
        [list(by_run)],
    ).fetchall()
    redo = [by_run[run] for run, n, distinct, nulls in counts if nulls or distinct != n]
    if redo:
        con.execute(
            f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [[p.run_id for p in redo]]
        )
    redo_ids = {p.run_id for p in redo}
    done = [p for p in group if p.run_id not in redo_ids]
    _collect_rejects(con, {p.source: p for p in done})
    for run, n, _, _ in counts:
        if run not in redo_ids:
            by_run[run].result.new_rows += n
    if spec.name == "router" and done:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _sb_runs AS SELECT unnest(?::VARCHAR[]) AS run_id",
            [[p.run_id for p in done]],
        )
        refresh_router_steps(con, f"(SELECT * FROM {table} SEMI JOIN _sb_runs USING (run_id))", fresh=True)
        con.execute("DROP TABLE _sb_runs")
    con.execute("DROP TABLE IF EXISTS _sb_files")
    return redo


def _load_staged(con: duckdb.DuckDBPyConnection, group: Sequence[FilePlan]) -> None:
    """Read into a staging table, report empty keys, then upsert (later rows win)."""
    spec = group[0].spec
    by_source = {p.source: p for p in group}
    query = _read_query(con, group)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _sb_new AS {query}")
    _collect_rejects(con, by_source)
    key_null = " OR ".join(f"{quote_ident(k)} IS NULL" for k in spec.key)
    for source, n in con.execute(
        f"SELECT _sb_file, count(*) FROM _sb_new WHERE {key_null} GROUP BY _sb_file"
    ).fetchall():
        by_source[source].result.errors.append(
            RowError(
                str(by_source[source].path),
                None,
                "EMPTY KEY",
                f"{n} row(s) with an empty {'/'.join(spec.key)}",
            )
        )
    con.execute("ALTER TABLE _sb_new DROP COLUMN _sb_file")
    fresh = not has_rows_for_runs(con, DB_TABLES[spec.name], "_sb_new")
    per_run = upsert_staged(con, DB_TABLES[spec.name], "_sb_new", spec.key)
    if spec.name == "router":
        refresh_router_steps(con, "_sb_new", fresh=fresh)
    con.execute("DROP TABLE IF EXISTS _sb_new")
    con.execute("DROP TABLE IF EXISTS _sb_files")
    for plan in group:  # one file per run in a group (same segment, same table)
        new, replaced = per_run.get(plan.run_id, (0, 0))
        plan.result.new_rows += new
        plan.result.replaced_rows += replaced
