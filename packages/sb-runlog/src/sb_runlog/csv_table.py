"""One CSV table on disk: whole-line appends, its header, and the cut of a half-written last line.

docs/log-format.md §1: a writer appends whole lines (one ``write`` of ``line + "\\n"``) and flushes after each
logged step; a last line without its ``\\n`` is still being written (a reader skips it; a resuming writer
cuts it). :func:`open_table` picks the file a writer appends to: the last segment when its header equals
the columns, else a new segment (docs/log-format.md §1, "Segments").
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from .columns import TableSpec
from .csv_fields import Field, format_value, keeps_full_precision
from .header_check import check_header
from .layout import segment_files, segment_index, segment_name

_SCAN_BLOCK = 1 << 16


def complete_end(path: Path, size: int | None = None) -> int:
    """The byte offset just past the last ``\\n`` among the first ``size`` bytes (0 when there is none)."""
    end = Path(path).stat().st_size if size is None else size
    with open(path, "rb") as handle:
        while end > 0:
            start = max(0, end - _SCAN_BLOCK)
            handle.seek(start)
            at = handle.read(end - start).rfind(b"\n")
            if at >= 0:
                return start + at + 1
            end = start
    return 0


def cut_partial_last_line(path: Path) -> int:
    """Remove a half-written last line (no ``\\n``) that a killed writer left; returns the bytes removed."""
    size = Path(path).stat().st_size
    keep = complete_end(path, size)
    if keep == size:
        return 0
    with open(path, "rb+") as handle:
        handle.truncate(keep)
    return size - keep


def read_header(path: Path) -> list[str]:
    """The column names in the first line of a CSV file (empty for an empty file)."""
    with open(path, encoding="utf-8", newline="") as handle:
        first = handle.readline().rstrip("\r\n")
    return next(csv.reader(io.StringIO(first)), []) if first else []


class CsvAppender:
    """Appends rows to one CSV file with a fixed header; writes the header when the file is new or empty.

    An existing non-empty file must have exactly these columns (a changed column set goes to a new segment).
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self._known = set(self.columns)
        self._full_precision = [keeps_full_precision(name) for name in self.columns]
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and read_header(self.path) != self.columns:
            raise ValueError(
                f"{self.path} has header {read_header(self.path)}, not the columns given; start a new "
                "segment file (docs/log-format.md §1, 'Segments')"
            )
        self._handle: IO[str] = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        if not exists:
            self._write_line(self.columns)
            self._handle.flush()

    def _write_line(self, fields: Sequence[str]) -> None:
        self._handle.write(",".join(fields) + "\n")

    def append(self, row: Mapping[str, Field]) -> None:
        """Append one row (column -> typed value); columns not given are empty."""
        unknown = set(row) - self._known
        if unknown:
            raise ValueError(f"{self.path}: values for columns not in the header: {sorted(unknown)}")
        self._write_line(
            [
                format_value(row.get(name), full)
                for name, full in zip(self.columns, self._full_precision, strict=True)
            ]
        )

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def open_table(run_dir: Path, spec: TableSpec, columns: Sequence[str]) -> CsvAppender:
    """The appender of table ``spec`` in ``run_dir`` for these columns.

    Appends to the last segment when its header equals ``columns`` (after cutting a half-written last line),
    else starts the next segment. Raises LogFormatError when ``columns`` is no valid header of the table.
    """
    check_header(spec, columns)
    run_dir = Path(run_dir)
    segments = segment_files(run_dir, spec.name)
    if not segments:
        return CsvAppender(run_dir / segment_name(spec.name, 0), columns)
    last = segments[-1]
    removed = cut_partial_last_line(last)
    if removed:
        print(f"sb-runlog: {last}: removed a half-written last line ({removed} bytes)", file=sys.stderr)
    if last.stat().st_size == 0 or read_header(last) == list(columns):
        return CsvAppender(last, columns)
    index = segment_index(spec.name, last.name) or 0
    return CsvAppender(run_dir / segment_name(spec.name, index + 1), columns)
