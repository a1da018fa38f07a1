"""A small writer of the run-directory format (docs/log-format.md).

Used by the synthetic-run generator of the tests and benchmarks; a trainer can use it as the reference
implementation of the writing rules: whole-line appends flushed per step, atomic JSON, fixed headers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .logformat import FORMAT_NAME, FORMAT_VERSION, RUN_FILE, STATUS_FILE


def config_hash(config: Mapping[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to a temp file in the same directory, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_value(value: Any) -> str:
    """One CSV field: empty for None, `nan`/`inf`/`-inf`, `.9g` floats, quoted text when needed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format(value, ".9g")
    text = str(value)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_status_file(
    run_dir: Path, run_id: str, state: str, step: int, total_steps: int, time_ms: float, **extra: Any
) -> None:
    """Rewrite ``status.json`` atomically (docs/log-format.md §6); ``extra`` adds or overrides keys."""
    status: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "state": state,
        "step": step,
        "total_steps": total_steps,
        "time_ms": time_ms,
        "updated_at": utc_now(),
    }
    status.update(extra)
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)


class CsvAppender:
    """Appends rows to one CSV table; the header is written once, when the file is new or empty."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        exists = path.is_file() and path.stat().st_size > 0
        self._handle: IO[str] = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        if exists:
            with open(path, encoding="utf-8") as reader:
                first = reader.readline().rstrip("\n")
            if first.split(",") != self.columns:
                self._handle.close()
                raise ValueError(
                    f"{path} has header {first!r}, not the columns given; start a new segment file "
                    "(docs/log-format.md §1, 'Segments')"
                )
        else:
            self._handle.write(",".join(self.columns) + "\n")
            self._handle.flush()

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path}: values for columns not in the header: {sorted(unknown)}")
        self._handle.write(",".join(format_value(row.get(name)) for name in self.columns) + "\n")

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class RunLogWriter:
    """Writes one run directory: run.json at start, appended CSV rows, status.json updates."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run_id: str,
        config: Mapping[str, Any],
        *,
        preset: str,
        num_layers: int,
        num_experts: int,
        top_k: int = 1,
        tokens_per_step: int,
        total_steps: int,
        scalar_columns: Sequence[str],
        router_columns: Sequence[str] | None = None,
        domain_columns: Sequence[str] | None = None,
        extra_header: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.total_steps = total_steps
        header: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "run_id": run_id,
            "preset": preset,
            "config": dict(config),
            "config_hash": config_hash(config),
            "created_at": utc_now(),
            "git_sha": None,
            "git_dirty": False,
            "host": os.uname().nodename,
            "world_size": 1,
            "device": "cpu",
            "num_layers": num_layers,
            "num_experts": num_experts,
            "top_k": top_k,
            "tokens_per_step": tokens_per_step,
            "total_steps": total_steps,
            "router_stats_scope": "global",
            "wandb": None,
            "resumed_from": None,
        }
        header.update(extra_header or {})
        write_json_atomic(self.run_dir / RUN_FILE, header)
        self.scalars = CsvAppender(self.run_dir / "scalars.csv", scalar_columns)
        self.router = CsvAppender(self.run_dir / "router.csv", router_columns) if router_columns else None
        self.domains = CsvAppender(self.run_dir / "domains.csv", domain_columns) if domain_columns else None

    def log_step(
        self,
        scalars: Mapping[str, Any],
        router_rows: Sequence[Mapping[str, Any]] = (),
        domain_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Append one step: its router and domain rows first, the scalars row last; flush all."""
        for table, rows in ((self.router, router_rows), (self.domains, domain_rows)):
            if rows and table is None:
                raise ValueError("rows given for a table this writer was not created with")
            for row in rows:
                table.append(row)  # type: ignore[union-attr]
        self.scalars.append(scalars)
        for table in (self.router, self.domains, self.scalars):
            if table is not None:
                table.flush()

    def write_status(self, state: str, step: int, time_ms: float, **extra: Any) -> None:
        write_status_file(self.run_dir, self.run_id, state, step, self.total_steps, time_ms, **extra)

    def close(self) -> None:
        for table in (self.router, self.domains, self.scalars):
            if table is not None:
                table.close()
