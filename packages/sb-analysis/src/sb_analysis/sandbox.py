"""The one SQL sandbox of every SQL surface: a locked read-only DuckDB connection and a statement check.

Two layers, each enough on its own for the file system (docs/log-format.md, "SQL sandbox"):

1. The connection: the database file is opened read-only with `enable_external_access = false` (no file,
   URL or other database can be read, written or attached), extension auto-install/auto-load off and
   optional memory/thread limits; then `disabled_filesystems = 'LocalFileSystem'` (DuckDB keeps the
   database's own file on an allow-list, so without this `COPY ... TO '<the database>' (USE_TMP_FILE
   false)` could overwrite it; the open database keeps reading through its open handle), and finally
   `lock_configuration = true`, so no later statement can undo any of it.
2. The statements: DuckDB's own parser (`extract_statements`) classifies each statement; only reads run
   (SELECT, which covers WITH/DESCRIBE/SHOW/SUMMARIZE/FROM/VALUES; EXPLAIN of a read; PRAGMAs that only
   report). Anything else is refused with one line naming the statement and why.

`sb-analysis sql`, `sb-analysis shell`, `RunDB.sql` and the router explorer's SQL page all go through
`run_query`; `connect_read_only` is the only way sb-analysis opens a database for reading.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

ST = duckdb.StatementType
# PRAGMAs that only report (the rest change settings or state)
READ_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "storage_info",
        "metadata_info",
        "version",
        "platform",
        "functions",
        "collations",
        "user_agent",
    }
)
ALLOWED = "SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN and PRAGMA table_info-style reads"
WHY = {
    ST.COPY: "COPY writes or reads files",
    ST.EXPORT: "EXPORT DATABASE writes files",
    ST.COPY_DATABASE: "COPY FROM DATABASE writes a database",
    ST.ATTACH: "ATTACH opens another database file",
    ST.DETACH: "DETACH changes the attached databases",
    ST.LOAD: "INSTALL/LOAD add extensions (code)",
    ST.EXTENSION: "extension statements add code",
    ST.SET: "SET/RESET/USE change settings",
    ST.VARIABLE_SET: "SET VARIABLE changes session state",
    ST.INSERT: "INSERT writes",
    ST.UPDATE: "UPDATE writes",
    ST.DELETE: "DELETE writes",
    ST.MERGE_INTO: "MERGE writes",
    ST.CREATE: "CREATE writes",
    ST.CREATE_FUNC: "CREATE FUNCTION/MACRO writes",
    ST.DROP: "DROP writes",
    ST.ALTER: "ALTER writes",
    ST.VACUUM: "VACUUM writes",
    ST.ANALYZE: "ANALYZE writes statistics",
    ST.CALL: "CALL runs a procedure (use SELECT * FROM fn(...) for table functions)",
    ST.TRANSACTION: "transaction statements are not needed for reads",
    ST.PREPARE: "PREPARE/EXECUTE are not supported here",
    ST.EXECUTE: "PREPARE/EXECUTE are not supported here",
}
_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(analyze\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)
_PRAGMA_NAME = re.compile(r"^\s*pragma\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)


class RefusedStatement(ValueError):
    """A statement the sandbox does not run: it could write, load code, attach, or reconfigure."""


class QueryTimeout(RuntimeError):
    """The query ran longer than the sandbox's time limit and was stopped."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandboxed connection (None: DuckDB's default).

    `memory_limit` and `threads` are settings of the database instance (fixed before the lock);
    `timeout_s` stops a query with `interrupt()` from a watchdog; `max_rows` caps what is fetched.
    """

    memory_limit: str | None = None
    threads: int | None = None
    timeout_s: float | None = None
    max_rows: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True)
class QueryResult:
    frame: pl.DataFrame
    truncated: bool  # the query has more rows than max_rows; only max_rows were fetched
    seconds: float


def _config(limits: Limits) -> dict[str, object]:
    config: dict[str, object] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "temp_directory": "",  # never spill to a file next to the database
    }
    if limits.memory_limit is not None:
        config["memory_limit"] = limits.memory_limit
    if limits.threads is not None:
        config["threads"] = int(limits.threads)
    return config


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text)


class DatabaseBusyError(RuntimeError):
    """The database file stayed locked by another process for longer than the timeout."""


def connect_read_only(
    db: str | os.PathLike[str], timeout_s: float = 10.0, limits: Limits = NO_LIMITS
) -> duckdb.DuckDBPyConnection:
    """Open the database as a sandboxed read-only connection; retries while an in-place ingest writes it."""
    path = Path(db)
    if not path.is_file():
        raise FileNotFoundError(
            f"database {path} does not exist; create it with `sb-analysis ingest RUN_DIR --db {path}`"
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=True, config=_config(limits))
            break
        except duckdb.IOException as err:
            if not _is_lock_error(err):
                raise
            if time.monotonic() > deadline:
                raise DatabaseBusyError(
                    f"{path} is locked by another process (an `sb-analysis ingest --in-place`?); try again "
                    "when it finishes"
                ) from err
            time.sleep(0.2)
        except duckdb.Error as err:
            if "different configuration" in str(err):
                raise DatabaseBusyError(
                    f"{path} is already open in this process with other settings; close that connection "
                    "(or use its RunDB) before opening it again"
                ) from err
            raise
    try:
        locked = con.execute("SELECT current_setting('lock_configuration')").fetchall()[0]
        if not (locked and locked[0]):  # another connection of this process may have locked it already
            con.execute("SET disabled_filesystems = 'LocalFileSystem'")
            con.execute("SET lock_configuration = true")
        external = con.execute("SELECT current_setting('enable_external_access')").fetchall()[0]
        if not external or external[0] or _can_read_file(con, path):
            raise DatabaseBusyError(f"{path} is open in this process without the SQL sandbox; close it first")
    except BaseException:
        con.close()
        raise
    return con


def _can_read_file(con: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Whether the connection can still open its own database file as a file (it must not)."""
    try:
        con.execute("SELECT size FROM read_blob(?)", [str(path)]).fetchall()
    except duckdb.PermissionException:
        return False
    return True


def check_statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The statements of `sql`, each checked to only read; raises RefusedStatement naming the first
    statement that does not (or an empty query)."""
    if not sql.strip():
        raise RefusedStatement("empty query: give a SQL statement, e.g. \"SELECT * FROM run_summary\"")
    try:
        statements = con.extract_statements(sql)
    except duckdb.ParserException as err:
        raise RefusedStatement(f"the query does not parse: {_one_line(err)}") from err
    if not statements:
        raise RefusedStatement("the query holds no statement (only comments or ';')")
    texts = []
    for statement in statements:
        _check_one(con, statement)
        texts.append(statement.query)
    return texts


def _check_one(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> None:
    kind = statement.type
    text = statement.query
    if kind == ST.SELECT:
        return
    if kind == ST.PRAGMA:
        match = _PRAGMA_NAME.match(text)
        name = match.group(1).lower() if match else "?"
        if name in READ_PRAGMAS:
            return
        raise RefusedStatement(
            f"refused {_head(text)!r}: PRAGMA {name} changes settings or state; the SQL tools only read "
            f"({ALLOWED}; read-only PRAGMAs: {', '.join(sorted(READ_PRAGMAS))})"
        )
    if kind == ST.EXPLAIN:
        match = _EXPLAIN_PREFIX.match(text)
        if match and match.group(1):
            raise RefusedStatement(
                f"refused {_head(text)!r}: EXPLAIN ANALYZE runs the statement; use EXPLAIN"
            )
        inner = con.extract_statements(text[match.end():]) if match else []
        if len(inner) != 1 or inner[0].type != ST.SELECT:
            raise RefusedStatement(f"refused {_head(text)!r}: only EXPLAIN of a SELECT is allowed")
        return
    why = WHY.get(kind, f"{kind.name} statements are not reads")
    raise RefusedStatement(f"refused {_head(text)!r}: {why}; the SQL tools only read ({ALLOWED})")


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[object] | None = None,
    limits: Limits = NO_LIMITS,
) -> QueryResult:
    """Check `sql` (exactly one reading statement) and run it on the sandboxed connection `con`.

    A statement DuckDB's sandbox stops (a file function such as read_text) becomes a RefusedStatement;
    a query longer than `limits.timeout_s` is interrupted (QueryTimeout); at most `limits.max_rows` rows
    are fetched.
    """
    statements = check_statements(con, sql)
    if len(statements) > 1:
        raise RefusedStatement(f"refused: {len(statements)} statements; give one statement at a time")
    cursor = con.cursor()
    watchdog = None
    if limits.timeout_s is not None:
        watchdog = threading.Timer(limits.timeout_s, cursor.interrupt)
        watchdog.daemon = True
    started = time.perf_counter()
    try:
        if watchdog is not None:
            watchdog.start()
        relation = cursor.sql(statements[0], params=list(params) if params else None)
        if relation is None:
            return QueryResult(pl.DataFrame(), False, time.perf_counter() - started)
        if limits.max_rows is None:
            return QueryResult(relation.pl(), False, time.perf_counter() - started)
        frame = relation.limit(limits.max_rows + 1).pl()
        truncated = frame.height > limits.max_rows
        return QueryResult(frame.head(limits.max_rows), truncated, time.perf_counter() - started)
    except duckdb.InterruptException as err:
        raise QueryTimeout(
            f"the query ran longer than {limits.timeout_s:g} s and was stopped; narrow it (WHERE, LIMIT)"
        ) from err
    except duckdb.PermissionException as err:
        raise RefusedStatement(
            f"refused {_head(statements[0])!r}: it reads or writes a file, URL or another database; the SQL "
            f"tools only see the tables and views of the database ({_one_line(err)})"
        ) from err
    finally:
        if watchdog is not None:
            watchdog.cancel()
        cursor.close()


def _head(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
