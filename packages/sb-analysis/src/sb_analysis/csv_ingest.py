"""Loading one CSV table file of a run directory: declared schema, bad rows reported, appends only.

Each file is read on its own with the column types of docs/log-format.md (never sniffed, never unioned by
name). DuckDB's `store_rejects` keeps the good rows and tells which lines were bad. The byte offset of the
last complete line that was loaded is remembered in `ingest_files`, so the next ingest of a growing file
reads only what was appended; a last line without its newline is left for the next ingest.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .derive import derive_layers, refresh_router_steps
from .loader import ensure_columns, quote_ident, upsert_staged
from .logformat import EXPERT_COLUMN, EXPERT_FAMILIES, LogFormatError, TableSpec, column_types, expert_counts


@dataclass
class RowError:
    """A row (or a whole file) that could not be loaded, with the file line it came from."""

    path: str
    line: int | None
    error_type: str
    message: str
    column: str | None = None
    raw_line: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        col = f" column {self.column}" if self.column else ""
        raw = f"  [{self.raw_line[:120]}]" if self.raw_line else ""
        return f"{where}:{col} {self.error_type}: {self.message}{raw}"


@dataclass
class FileResult:
    path: str
    kind: str
    new_rows: int = 0
    replaced_rows: int = 0
    errors: list[RowError] = field(default_factory=list)
    pending: RowError | None = None


def _last_newline_end(path: Path, size: int) -> int:
    """Offset just past the last b'\\n' of the file (0 if there is none)."""
    block = 1 << 16
    with open(path, "rb") as handle:
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                return start + idx + 1
            pos = start
    return 0


def _count_newlines(path: Path, start: int, end: int) -> int:
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def _select_list(spec: TableSpec, types: dict[str, str], n_experts: int | None) -> tuple[str, dict[str, str]]:
    """SELECT expressions turning CSV columns into table columns, and the table columns they need."""
    exprs = ["?::VARCHAR AS run_id"]
    needed: dict[str, str] = {}
    for name, typ in types.items():
        if spec.kind == "router" and EXPERT_COLUMN.match(name):
            continue
        exprs.append(quote_ident(name))
        needed[name] = typ
    if spec.kind == "router":
        counts = expert_counts(list(types))
        for family in EXPERT_FAMILIES:
            n = counts.get(family)
            if n is None:
                continue
            if n_experts is not None and n != n_experts:
                raise LogFormatError(f"{n} {family}_e* columns but run.json says num_experts = {n_experts}")
            items = ", ".join(quote_ident(f"{family}_e{i}") for i in range(n))
            exprs.append(f"list_value({items}) AS {family}")
    return ", ".join(exprs), needed


def load_table_file(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    path: Path,
    spec: TableSpec,
    *,
    n_experts: int | None = None,
    finished: bool = False,
) -> FileResult:
    """Load the not-yet-loaded complete lines of one CSV file into `spec.db_table`."""
    result = FileResult(str(path), spec.kind)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header_bytes = handle.readline()
    if not header_bytes.endswith(b"\n"):
        if size:
            result.pending = RowError(str(path), 1, "INCOMPLETE HEADER", "header line not finished yet")
        return result
    header_text = header_bytes.decode("utf-8").rstrip("\r\n")
    try:
        header = next(csv.reader(io.StringIO(header_text)))
        types = column_types(spec, header)
        select, needed = _select_list(spec, types, n_experts)
    except (LogFormatError, StopIteration) as err:
        result.errors.append(RowError(str(path), 1, "BAD HEADER", str(err), raw_line=header_text))
        return result

    state = con.execute(
        "SELECT header, bytes_done, lines_done, rows_loaded FROM ingest_files WHERE run_id = ? AND path = ?",
        [run_id, str(path)],
    ).fetchall()
    state = state[0] if state else None
    complete_end = _last_newline_end(path, size)
    header_end = len(header_bytes)
    if state and state[0] == header_text and header_end <= state[1] <= complete_end:
        start, lines_before, rows_before = state[1], state[2], state[3]
    else:
        start, lines_before, rows_before = header_end, 1, 0

    if complete_end < size:
        with open(path, "rb") as handle:
            handle.seek(complete_end)
            tail = handle.read(200).decode("utf-8", "replace")
        line_no = lines_before + _count_newlines(path, start, complete_end) + 1
        result.pending = RowError(
            str(path),
            line_no,
            "INCOMPLETE LAST LINE",
            "no newline at the end of the file"
            + (
                " (the run has ended: this row is truncated)"
                if finished
                else " (still being written; read on the next ingest)"
            ),
            raw_line=tail,
        )
        if finished:
            result.errors.append(result.pending)

    if start < complete_end:
        new_lines = _count_newlines(path, start, complete_end)
        tmp_path: str | None = None
        if start == header_end and complete_end == size:
            source = str(path)
        else:
            fd, tmp_path = tempfile.mkstemp(suffix=".csv", prefix="sb-analysis-")
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                out.write(header_bytes)
                src.seek(start)
                remaining = complete_end - start
                while remaining > 0:
                    chunk = src.read(min(remaining, 1 << 24))
                    out.write(chunk)
                    remaining -= len(chunk)
            source = tmp_path
        try:
            _stage_and_upsert(
                con, run_id, source, spec, types, select, needed, result, lines_before - 1, n_experts
            )
        finally:
            if tmp_path:
                Path(tmp_path).unlink(missing_ok=True)
        lines_done = lines_before + new_lines
    else:
        lines_done = lines_before
    con.execute("DELETE FROM ingest_files WHERE run_id = ? AND path = ?", [run_id, str(path)])
    con.execute(
        "INSERT INTO ingest_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            run_id,
            str(path),
            spec.kind,
            header_text,
            complete_end,
            lines_done,
            rows_before + result.new_rows + result.replaced_rows,
            size,
        ],
    )
    return result


def _stage_and_upsert(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    source: str,
    spec: TableSpec,
    types: dict[str, str],
    select: str,
    needed: dict[str, str],
    result: FileResult,
    line_offset: int,
    n_experts: int | None,
) -> None:
    columns_sql = "{" + ", ".join(f"'{name}': '{typ}'" for name, typ in types.items()) + "}"
    con.execute("DROP TABLE IF EXISTS _sb_rejects")
    con.execute("DROP TABLE IF EXISTS _sb_rejects_scan")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _sb_new AS SELECT {select} FROM read_csv(?, header = true, "
        f"auto_detect = false, columns = {columns_sql}, delim = ',', quote = '\"', escape = '\"', "
        "store_rejects = true, rejects_table = '_sb_rejects', rejects_scan = '_sb_rejects_scan')",
        [run_id, source],
    )
    # DuckDB reports one reject per bad cell (e.g. one per missing column); keep the first per line
    for line, column, etype, raw, message in con.execute(
        "SELECT line, column_name, error_type, csv_line, error_message FROM _sb_rejects "
        "QUALIFY row_number() OVER (PARTITION BY line ORDER BY column_idx) = 1 ORDER BY line"
    ).fetchall():
        result.errors.append(
            RowError(result.path, int(line) + line_offset, str(etype), str(message), column, raw)
        )
    null_keys = con.execute(
        "SELECT count(*) FROM _sb_new WHERE " + " OR ".join(f"{quote_ident(k)} IS NULL" for k in spec.key)
    ).fetchall()[0][0]
    if null_keys:
        result.errors.append(
            RowError(result.path, None, "EMPTY KEY", f"{null_keys} row(s) with an empty {'/'.join(spec.key)}")
        )
    if spec.kind == "router":
        derive_layers(con, "_sb_new", n_experts)
    ensure_columns(con, spec.db_table, needed)
    new, replaced = upsert_staged(con, spec.db_table, "_sb_new", run_id, spec.key)
    if spec.kind == "router":
        refresh_router_steps(con, run_id, "_sb_new")
    result.new_rows += new
    result.replaced_rows += replaced
    con.execute("DROP TABLE IF EXISTS _sb_new")
