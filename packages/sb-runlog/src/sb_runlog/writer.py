"""RunLogWriter: the one writer of a run directory (run.json, the CSV tables, status.json).

It follows every writing rule of docs/log-format.md: run.json and status.json are replaced atomically, each
table gets a fixed header and whole-line appends flushed per logged step, values are typed by the declared
columns before anything is written, and a directory that already holds the table continues it (the last
segment when the header is the same, after cutting a half-written last line; else a new segment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .columns import DOMAINS, ROUTER, SCALARS, TableSpec
from .csv_fields import Field, typed_row
from .csv_table import CsvAppender, open_table
from .header_check import check_header
from .json_files import write_json_atomic
from .layout import RUN_FILE
from .status import write_status

Row = Mapping[str, Any]


class RunLogWriter:
    """Writes one run directory.

    ``header`` is the complete run.json (see :func:`sb_runlog.new_run_header`); it is written at once. Each
    table's columns are fixed here; scalars.csv is opened at once, router.csv and domains.csv with their
    first rows (a run that logs none gets no file).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        header: Mapping[str, Any],
        *,
        scalar_columns: Sequence[str],
        router_columns: Sequence[str] | None = None,
        domain_columns: Sequence[str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.header = dict(header)
        self.run_id: str = self.header["run_id"]
        self.total_steps: int = self.header["total_steps"]
        self._columns: dict[str, list[str]] = {}
        for spec, columns in ((SCALARS, scalar_columns), (ROUTER, router_columns), (DOMAINS, domain_columns)):
            if columns is not None:
                check_header(spec, columns)
                self._columns[spec.name] = list(columns)
        self._tables: dict[str, CsvAppender] = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_header()
        self._table(SCALARS)

    def write_header(self, **changes: Any) -> None:
        """(Re)write run.json atomically, with ``changes`` applied to the header first."""
        self.header.update(changes)
        write_json_atomic(self.run_dir / RUN_FILE, self.header)

    def _table(self, spec: TableSpec) -> CsvAppender:
        if spec.name not in self._columns:
            raise ValueError(f"rows given for {spec.name}.csv, but this writer has no columns for it")
        if spec.name not in self._tables:
            self._tables[spec.name] = open_table(self.run_dir, spec, self._columns[spec.name])
        return self._tables[spec.name]

    def log_step(
        self, scalars: Row, router_rows: Sequence[Row] = (), domain_rows: Sequence[Row] = ()
    ) -> tuple[dict[str, Field], list[dict[str, Field]]]:
        """Append one logged step: its router and domain rows, then its scalars row; flush every table.

        Every value is typed first (a bad value raises before any line is written). Returns the typed
        scalars row and router rows, as written.
        """
        for spec, rows in ((ROUTER, router_rows), (DOMAINS, domain_rows), (SCALARS, [scalars])):
            if rows:
                self._check_columns(spec, rows)
        typed_scalars = typed_row(SCALARS, scalars)
        typed_router = [typed_row(ROUTER, row) for row in router_rows]
        typed_domains = [typed_row(DOMAINS, row) for row in domain_rows]
        for spec, rows in ((ROUTER, typed_router), (DOMAINS, typed_domains), (SCALARS, [typed_scalars])):
            if rows:
                table = self._table(spec)
                for row in rows:
                    table.append(row)
                table.flush()
        return typed_scalars, typed_router

    def _check_columns(self, spec: TableSpec, rows: Sequence[Row]) -> None:
        if spec.name not in self._columns:
            raise ValueError(f"rows given for {spec.name}.csv, but this writer has no columns for it")
        known = set(self._columns[spec.name])
        unknown = sorted({column for row in rows for column in row} - known)
        if unknown:
            raise ValueError(f"values for columns not in the {spec.name}.csv header: {unknown}")

    def write_status(self, state: str, step: int, time_ms: float, **extra: Any) -> None:
        """Rewrite status.json atomically (docs/log-format.md §6); ``extra`` adds keys."""
        write_status(self.run_dir, self.run_id, state, step, self.total_steps, time_ms, **extra)

    def close(self) -> None:
        """Close the CSV files (status.json is the caller's to write)."""
        for table in self._tables.values():
            table.close()
        self._tables.clear()
