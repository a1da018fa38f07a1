"""Planning which bytes of which CSV file to load: headers typed by the declared schema, incremental offsets.

Every file's header is typed with the column types of docs/log-format.md (never sniffed). The byte offset
of the last complete line loaded from each file is kept in `ingest_files`; a plan starts after it when the
header is unchanged, so the next ingest of a growing file reads only what was appended. A last line
without its newline is left for the next ingest (reported as pending, or as an error once the run ended).
Loading the plans is `csv_ingest.load_plans`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import sb_runlog
from sb_runlog import EXPERT_FAMILIES, LogFormatError, TableSpec, column_types, expert_counts
from sb_runlog.header_check import EXPERT_COLUMN

from .loader import quote_ident


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


@dataclass
class FilePlan:
    """What to read from one file in this ingest."""

    run_id: str
    path: Path
    spec: TableSpec
    segment: int
    n_experts: int | None
    header_bytes: bytes
    header_text: str
    types: dict[str, str]
    select: str
    needed: dict[str, str]
    start: int
    complete_end: int
    size: int
    lines_before: int
    rows_before: int
    result: FileResult
    new_lines: int = 0
    source: str | None = None
    tmp: bool = False


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
    """SELECT expressions turning CSV columns (alias c) into table columns, and the table columns needed."""
    exprs = ["f._sb_run_id AS run_id"]
    needed: dict[str, str] = {}
    for name, typ in types.items():
        if spec.name == "router" and EXPERT_COLUMN.match(name):
            continue
        exprs.append(f"c.{quote_ident(name)}")
        needed[name] = typ
    if spec.name == "router":
        counts = expert_counts(list(types))
        for family in EXPERT_FAMILIES:
            n = counts.get(family)
            if n is None:
                continue
            if n_experts is not None and n != n_experts:
                raise LogFormatError(f"{n} {family}_e* columns but run.json says num_experts = {n_experts}")
            items = ", ".join(f"c.{quote_ident(f'{family}_e{i}')}" for i in range(n))
            exprs.append(f"list_value({items}) AS {family}")
    exprs.append("c._sb_file AS _sb_file")
    return ", ".join(exprs), needed


def file_states(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> dict[tuple[str, str], tuple]:
    rows = con.execute(
        "SELECT run_id, path, header, bytes_done, lines_done, rows_loaded FROM ingest_files "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(run_ids)],
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def plan_file(
    run_id: str,
    path: Path,
    spec: TableSpec,
    segment: int,
    *,
    states: Mapping[tuple[str, str], tuple],
    n_experts: int | None,
    finished: bool,
) -> FilePlan | FileResult:
    """Decide what to read from a file; a FileResult (errors / pending only) when nothing can be read."""
    result = FileResult(str(path), spec.name)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header_bytes = handle.readline()
    if not header_bytes.endswith(b"\n"):
        if size:
            result.pending = RowError(str(path), 1, "INCOMPLETE HEADER", "header line not finished yet")
            if finished:
                result.errors.append(result.pending)
        return result
    header_text = header_bytes.decode("utf-8").rstrip("\r\n")
    try:
        header = next(csv.reader(io.StringIO(header_text)))
        types = column_types(spec, header)
        select, needed = _select_list(spec, types, n_experts)
    except (LogFormatError, StopIteration) as err:
        result.errors.append(RowError(str(path), 1, "BAD HEADER", str(err), raw_line=header_text))
        return result
    state = states.get((run_id, str(path)))
    complete_end = sb_runlog.complete_end(path, size)
    header_end = len(header_bytes)
    if state and state[0] == header_text and header_end <= state[1] <= complete_end:
        start, lines_before, rows_before = state[1], state[2], state[3]
    else:
        start, lines_before, rows_before = header_end, 1, 0
    plan = FilePlan(
        run_id,
        path,
        spec,
        segment,
        n_experts,
        header_bytes,
        header_text,
        types,
        select,
        needed,
        start,
        complete_end,
        size,
        lines_before,
        rows_before,
        result,
    )
    plan.new_lines = _count_newlines(path, start, complete_end) if start < complete_end else 0
    if complete_end < size:
        with open(path, "rb") as handle:
            handle.seek(complete_end)
            tail = handle.read(200).decode("utf-8", "replace")
        why = (
            " (the run has ended: this row is truncated)"
            if finished
            else " (still being written; read on the next ingest)"
        )
        result.pending = RowError(
            str(path),
            lines_before + plan.new_lines + 1,
            "INCOMPLETE LAST LINE",
            "no newline at the end of the file" + why,
            raw_line=tail,
        )
        if finished:
            result.errors.append(result.pending)
    return plan
