"""Input discovery and document reading for the writer: text files, JSON Lines and Parquet.

One text file is one document; one JSON Lines record is one document (its text field, and an optional
domain label in its ``domain`` field: :mod:`sb_data.domains`); one Parquet row is one document (its text
column). ``.gz`` text and JSON Lines files are decompressed on the fly.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sb_data.domains import DomainLabelError, check_domain

GLOB_CHARS = frozenset("*?[")


class DocumentSourceError(ValueError):
    """An input file cannot be read as documents; the message names the file (and line or row)."""


@dataclass(frozen=True)
class Document:
    text: str
    location: str
    """Where the document came from, for error messages (``file``, ``file:line`` or ``file row N``)."""
    input_bytes: int
    """Bytes of input consumed by this document (drives the progress bar)."""
    domain: str | None = None
    """The document's domain label (JSON Lines ``domain`` field), None when it has none."""


def input_kind(path: Path) -> str:
    """``jsonl``, ``parquet`` or ``text`` from the file name."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _files_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return found


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named by ``inputs`` (files, folders searched recursively, or glob patterns), in order."""
    if not inputs:
        raise DocumentSourceError("no inputs given: name text/.jsonl/.parquet files, folders or globs")
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = _files_under(path)
        elif path.is_file():
            matches = [path]
        elif GLOB_CHARS & set(str(item)):
            matches = []
            for hit in sorted(glob.glob(str(item), recursive=True)):
                hit_path = Path(hit)
                matches.extend(_files_under(hit_path) if hit_path.is_dir() else [hit_path])
        else:
            raise DocumentSourceError(f"input {str(item)!r}: no such file or folder")
        if not matches:
            raise DocumentSourceError(f"input {str(item)!r} matches no file")
        out.extend(matches)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_text(path: Path) -> Iterator[Document]:
    with _open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentSourceError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8 or leave it out "
            "of the inputs"
        ) from None
    yield Document(text, str(path), path.stat().st_size)


def _read_jsonl(path: Path, field: str, domain_field: str) -> Iterator[Document]:
    compressed = path.name.lower().endswith(".gz")
    with _open_binary(path) as f:
        raw = f.fileobj if compressed else None  # progress counts bytes of the file on disk
        consumed = 0
        for lineno, line in enumerate(f, start=1):
            if raw is not None:
                position = raw.tell()
                step, consumed = position - consumed, position
            else:
                step = len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DocumentSourceError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise DocumentSourceError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            if field not in record:
                keys = ", ".join(sorted(record)) or "none"
                raise DocumentSourceError(
                    f"{path}:{lineno}: no field {field!r} (fields: {keys}); choose one with --text-field"
                )
            text = record[field]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise DocumentSourceError(
                    f"{path}:{lineno}: field {field!r} holds {type(text).__name__}, not a string"
                )
            try:
                domain = check_domain(record.get(domain_field), f"{path}:{lineno}", domain_field)
            except DomainLabelError as exc:
                raise DocumentSourceError(str(exc)) from None
            yield Document(text, f"{path}:{lineno}", step, domain)


def _read_parquet(path: Path, column: str, batch_rows: int = 2048) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DocumentSourceError(f"{path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DocumentSourceError(
            f"{path}: no column {column!r} (columns: {', '.join(names)}); choose one with --text-field"
        )
    total_rows = max(pf.metadata.num_rows, 1)
    size = path.stat().st_size
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=batch_rows):
        values = batch.column(0).to_pylist()
        for value in values:
            if value is not None and not isinstance(value, str):
                raise DocumentSourceError(
                    f"{path} row {row}: column {column!r} holds {type(value).__name__}, not a string"
                )
            row += 1
            yield Document(value or "", f"{path} row {row - 1}", size // total_rows)


def read_documents(
    path: Path, *, text_field: str = "text", domain_field: str = "domain"
) -> Iterator[Document]:
    """Documents of one input file (see the module docstring for what a document is)."""
    kind = input_kind(path)
    if kind == "jsonl":
        return _read_jsonl(path, text_field, domain_field)
    if kind == "parquet":
        return _read_parquet(path, text_field)
    return _read_text(path)


def total_input_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)
