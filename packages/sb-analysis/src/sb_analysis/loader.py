"""Moving a staged batch of rows into a base table: new columns, de-duplication, upsert by key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import duckdb


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE table_name = ? AND schema_name = 'main' AND database_name = current_database() "
        "ORDER BY column_index",
        [table],
    ).fetchall()
    return {name: typ for name, typ in rows}


def ensure_columns(con: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, str]) -> list[str]:
    """Add the columns the table lacks (metrics a run introduces); returns the names added."""
    have = {name.lower() for name in table_columns(con, table)}
    added = []
    for name, typ in columns.items():
        if name.lower() not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(name)} {typ}")
            added.append(name)
    return added


def upsert_staged(
    con: duckdb.DuckDBPyConnection, table: str, staged: str, run_id: str, key: Iterable[str]
) -> tuple[int, int]:
    """Insert the staged rows of one run into `table`; a staged row replaces the row with the same key.

    Rows with a NULL key are dropped. Within the staged batch the last row for a key wins (rowid order,
    i.e. file order). Returns (new keys, replaced keys).
    """
    key = list(key)
    key_sql = ", ".join(quote_ident(k) for k in key)
    con.execute(f"DELETE FROM {staged} WHERE " + " OR ".join(f"{quote_ident(k)} IS NULL" for k in key))
    total, distinct = con.execute(f"SELECT count(*), count(DISTINCT ({key_sql})) FROM {staged}").fetchall()[0]
    if total == 0:
        return 0, 0
    if distinct != total:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {staged}_dedup AS SELECT * FROM {staged} "
            f"QUALIFY row_number() OVER (PARTITION BY {key_sql} ORDER BY rowid DESC) = 1"
        )
        con.execute(f"DROP TABLE {staged}")
        con.execute(f"ALTER TABLE {staged}_dedup RENAME TO {staged}")
    replaced = 0
    has_rows = con.execute(f"SELECT 1 FROM {table} WHERE run_id = ? LIMIT 1", [run_id]).fetchall()
    if has_rows:
        match = " AND ".join(f"t.{quote_ident(k)} = n.{quote_ident(k)}" for k in key)
        replaced = con.execute(
            f"SELECT count(*) FROM {table} t JOIN {staged} n ON {match} WHERE t.run_id = ?", [run_id]
        ).fetchall()[0][0]
        if replaced:
            con.execute(f"DELETE FROM {table} t USING {staged} n WHERE t.run_id = ? AND {match}", [run_id])
    n_rows = con.execute(f"SELECT count(*) FROM {staged}").fetchall()[0][0]
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {staged}")
    return n_rows - replaced, replaced
