"""`sb-analysis shell`: a small read-only SQL prompt over the database (statements go through the sandbox)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import duckdb
import polars as pl

from .sandbox import QueryTimeout, RefusedStatement
from .table import print_frame

if TYPE_CHECKING:
    from .api import RunDB

HELP = """Statements end with ';'. Commands:
  .tables            list tables and views
  .schema NAME       columns of a table or view
  .limit N           rows to print (now {limit})
  .help              this text
  .quit              leave (or Ctrl-D)"""


def run_shell(db: RunDB, limit: int = 50, stdin=None) -> int:
    stream = stdin or sys.stdin
    interactive = stream.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print(f"sb-analysis shell on {db.path} (read-only). .help for commands.")
    buffer: list[str] = []
    while True:
        prompt = "...> " if buffer else "sb> "
        if interactive:
            try:
                line = input(prompt)
            except EOFError:
                print()
                break
        else:
            line = stream.readline()
            if not line:
                break
            line = line.rstrip("\n")
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            parts = stripped.split()
            command = parts[0]
            if command in (".quit", ".exit"):
                break
            if command == ".help":
                print(HELP.format(limit=limit))
            elif command == ".tables":
                print_frame(
                    db.sql(
                        "SELECT table_name AS name, table_type AS type FROM information_schema.tables "
                        "WHERE table_schema = 'main' ORDER BY table_type, table_name"
                    ),
                    1000,
                )
            elif command == ".schema" and len(parts) == 2:
                print_frame(
                    db.sql(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = ? ORDER BY ordinal_position",
                        [parts[1]],
                    ),
                    1000,
                )
            elif command == ".limit" and len(parts) == 2 and parts[1].isdigit():
                limit = int(parts[1])
            else:
                print(f"unknown command {stripped!r}; .help lists the commands")
            continue
        if not stripped:
            continue
        buffer.append(line)
        if stripped.endswith(";"):
            _run(db, "\n".join(buffer), limit)
            buffer = []
    if buffer:
        _run(db, "\n".join(buffer), limit)
    return 0


def _run(db: RunDB, text: str, limit: int) -> None:
    """Each statement of `text` in turn; nothing runs when any of them is refused."""
    try:
        for statement in db.statements(text):
            print_frame(db.sql(statement), limit)
    except (RefusedStatement, QueryTimeout, duckdb.Error, pl.exceptions.PolarsError) as err:
        print(f"error: {' '.join(str(err).split())}")
