"""Moving a staged batch of rows into a base table: new columns, de-duplication, upsert by key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import duckdb


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]


def ensure_columns(con: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, str]) -> list[str]:
    """Add the columns the table lacks (metrics a run introduces); returns the names added."""
    have = {name.lower() for name in table_columns(con, table)}
    added = []
    for name, typ in columns.items():
        if name.lower() not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(name)} {typ}")
            added.append(name)
    return added


def has_rows_for_runs(con: duckdb.DuckDBPyConnection, table: str, staged: str) -> bool:
    return bool(con.execute(
        f"SELECT 1 FROM {table} WHERE run_id IN (SELECT DISTINCT run_id FROM {staged}) LIMIT 1"
    ).fetchall())


def has_rows_for_run_ids(con: duckdb.DuckDBPyConnection, table: str, run_ids: list[str]) -> bool:
    return bool(con.execute(
        f"SELECT 1 FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[])) LIMIT 1", [run_ids]
    ).fetchall())


def upsert_staged(
    con: duckdb.DuckDBPyConnection, table: str, staged: str, key: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """Insert staged rows (of one or more runs) into `table`; a staged row replaces the stored row with
    the same (run_id, key).

    Rows with a NULL key are dropped. Within the staged batch the last row for a key wins (rowid order,
    i.e. file order). Returns {run_id: (new rows, replaced rows)}.
    """
    full_key = ["run_id", *key]
    key_sql = ", ".join(quote_ident(k) for k in full_key)
    null_sql = " OR ".join(f"{quote_ident(k)} IS NULL" for k in full_key)
    total, distinct, nulls = con.execute(
        f"SELECT count(*), count(DISTINCT ({key_sql})), count(*) FILTER (WHERE {null_sql}) FROM {staged}"
    ).fetchall()[0]
    if nulls:
        con.execute(f"DELETE FROM {staged} WHERE {null_sql}")
    if total - nulls == 0:
        return {}
    if distinct != total - nulls:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {staged}_dedup AS SELECT * FROM {staged} "
            f"QUALIFY row_number() OVER (PARTITION BY {key_sql} ORDER BY rowid DESC) = 1"
        )
        con.execute(f"DROP TABLE {staged}")
        con.execute(f"ALTER TABLE {staged}_dedup RENAME TO {staged}")
    counts = {
        run: [n, 0]
        for run, n in con.execute(f"SELECT run_id, count(*) FROM {staged} GROUP BY run_id").fetchall()
    }
    if has_rows_for_runs(con, table, staged):
        match = " AND ".join(f"t.{quote_ident(k)} = n.{quote_ident(k)}" for k in full_key)
        for run, n in con.execute(
            f"SELECT t.run_id, count(*) FROM {table} t JOIN {staged} n ON {match} GROUP BY t.run_id"
        ).fetchall():
            counts[run][1] = n
        con.execute(f"DELETE FROM {table} t USING {staged} n WHERE {match}")
    # row order inside the table does not matter: let DuckDB write in parallel
    con.execute("SET preserve_insertion_order = false")
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {staged}")
    finally:
        con.execute("RESET preserve_insertion_order")
    return {run: (n - replaced, replaced) for run, (n, replaced) in counts.items()}
