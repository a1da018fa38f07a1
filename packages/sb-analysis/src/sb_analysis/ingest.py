"""`sb-analysis ingest`: run directories and W&B runs into the database, idempotently and incrementally."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from .csv_ingest import FileResult, RowError, load_table_file
from .db import DEFAULT_DB, writable_copy
from .derive import derive_layers, refresh_router_steps
from .loader import ensure_columns, upsert_staged
from .logformat import (
    RUN_FILE,
    TABLES,
    LogFormatError,
    flatten_config,
    read_run_header,
    read_status,
    segment_files,
)
from .views import create_views, refresh_config_view, refresh_run_health
from .wandb_ingest import (
    WANDB_PATH,
    WandbReadError,
    WandbRun,
    find_wandb_files,
    read_api_run,
    read_offline_run,
)


@dataclass
class RunResult:
    run_id: str
    source: str
    path: str
    new_rows: dict[str, int] = field(default_factory=dict)
    replaced_rows: dict[str, int] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"+{n} {kind}" for kind, n in self.new_rows.items() if n or kind == "steps"]
        replaced = sum(self.replaced_rows.values())
        if replaced:
            parts.append(f"{replaced} replaced")
        if self.errors:
            parts.append(f"{len(self.errors)} bad row(s)")
        return f"{self.run_id:<32} {self.source:<13} " + ", ".join(parts)


@dataclass
class IngestReport:
    db: str
    runs: list[RunResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def row_errors(self) -> list[RowError]:
        return [err for run in self.runs for err in run.errors]

    @property
    def exit_code(self) -> int:
        if self.failures:
            return 1
        return 2 if self.row_errors else 0


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def _store_run(con: duckdb.DuckDBPyConnection, row: dict[str, Any], config: dict[str, Any]) -> None:
    existing = con.execute("SELECT source, path FROM runs WHERE run_id = ?", [row["run_id"]]).fetchall()
    existing = existing[0] if existing else None
    if existing and existing[0] != row["source"]:
        raise LogFormatError(
            f"run id {row['run_id']!r} is already in the database from a {existing[0]} source "
            f"({existing[1]}); pass --run-id to store this one under another id"
        )
    con.execute("DELETE FROM runs WHERE run_id = ?", [row["run_id"]])
    columns = list(row)
    marks = ", ".join("?" for _ in columns)
    con.execute(
        f"INSERT INTO runs ({', '.join(columns)}, ingested_at) VALUES ({marks}, now())",
        [row[c] for c in columns],
    )
    con.execute("DELETE FROM run_config WHERE run_id = ?", [row["run_id"]])
    flat = flatten_config(config)
    if flat:
        rows = []
        for key, value in flat.items():
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
            kind = {bool: "bool", int: "int", float: "float", str: "string"}.get(type(value), "json")
            if value is None:
                kind = "null"
            rows.append((row["run_id"], key, json.dumps(value), number, kind))
        con.executemany("INSERT INTO run_config VALUES (?, ?, ?, ?, ?)", rows)


def ingest_run_dir(con: duckdb.DuckDBPyConnection, run_dir: Path) -> RunResult:
    header = read_run_header(run_dir)
    status = read_status(run_dir)
    run_id = header["run_id"]
    state = status.get("state", "running")
    wandb = header.get("wandb") or {}
    _store_run(
        con,
        {
            "run_id": run_id,
            "source": "csv",
            "path": str(run_dir.resolve()),
            "preset": header.get("preset"),
            "config_hash": header.get("config_hash"),
            "config": _json_or_none(header.get("config")),
            "created_at": _timestamp(header.get("created_at")),
            "git_sha": header.get("git_sha"),
            "host": header.get("host"),
            "world_size": header.get("world_size"),
            "device": header.get("device"),
            "num_layers": header.get("num_layers"),
            "num_experts": header.get("num_experts"),
            "top_k": header.get("top_k"),
            "tokens_per_step": header.get("tokens_per_step"),
            "total_steps": header.get("total_steps"),
            "state": state,
            "status": _json_or_none(status),
            "wandb_run_id": wandb.get("run_id"),
            "wandb_project": wandb.get("project"),
            "format_version": header.get("format_version"),
        },
        header.get("config") or {},
    )
    result = RunResult(run_id, "csv", str(run_dir))
    finished = state != "running"
    for spec in TABLES.values():
        new = replaced = 0
        for path in segment_files(run_dir, spec):
            file_result: FileResult = load_table_file(
                con, run_id, path, spec, n_experts=header.get("num_experts"), finished=finished
            )
            new += file_result.new_rows
            replaced += file_result.replaced_rows
            result.errors.extend(file_result.errors)
            if file_result.pending and not finished:
                result.warnings.append(str(file_result.pending))
        result.new_rows[spec.db_table] = new
        result.replaced_rows[spec.db_table] = replaced
    return result


def _store_frame(
    con: duckdb.DuckDBPyConnection,
    table: str,
    run_id: str,
    frame: Any,
    key: Sequence[str],
    n_experts: int | None = None,
) -> tuple[int, int]:
    if frame.is_empty():
        return 0, 0
    con.register("_sb_frame", frame)
    try:
        types = {
            row[0]: row[1]
            for row in con.execute("DESCRIBE SELECT * FROM _sb_frame").fetchall()
            if row[0] not in ("load", "demand", "importance")
        }
        ensure_columns(con, table, types)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _sb_new AS SELECT ?::VARCHAR AS run_id, * FROM _sb_frame", [run_id]
        )
    finally:
        con.unregister("_sb_frame")
    if table == "router_layers":
        derive_layers(con, "_sb_new", n_experts)
    result = upsert_staged(con, table, "_sb_new", run_id, key)
    if table == "router_layers":
        refresh_router_steps(con, run_id, "_sb_new")
    con.execute("DROP TABLE IF EXISTS _sb_new")
    return result


def ingest_wandb_run(con: duckdb.DuckDBPyConnection, run: WandbRun, run_id: str | None = None) -> RunResult:
    run_id = run_id or f"wandb-{run.wandb_id}"
    config = run.config
    n_experts = config.get("num_experts") or config.get("n_experts")
    if n_experts is None and "load" in run.router.columns:
        n_experts = int(run.router["load"].list.len().max())  # type: ignore[arg-type]
    _store_run(
        con,
        {
            "run_id": run_id,
            "source": run.source,
            "path": run.path,
            "preset": config.get("preset"),
            "config_hash": None,
            "config": _json_or_none(config),
            "created_at": _timestamp(run.created_at),
            "host": run.host,
            "num_layers": config.get("num_layers"),
            "num_experts": n_experts,
            "top_k": config.get("topk") or config.get("top_k"),
            "total_steps": config.get("num_iterations") or config.get("total_steps"),
            "state": run.state,
            "status": _json_or_none({"state": run.state, "summary": run.summary}),
            "wandb_run_id": run.wandb_id,
            "wandb_project": run.project,
            "format_version": None,
        },
        config,
    )
    result = RunResult(run_id, run.source, run.path, warnings=list(run.warnings))
    for table, frame, key in (
        ("steps", run.steps, ("step",)),
        ("router_layers", run.router, ("step", "layer")),
    ):
        new, replaced = _store_frame(con, table, run_id, frame, key, n_experts)
        result.new_rows[table] = new
        result.replaced_rows[table] = replaced
    return result


def expand_sources(targets: Iterable[str]) -> list[tuple[str, str]]:
    """Each argument -> [(kind, path)]: 'csv' run dirs, 'wandb' .wandb files, 'api' W&B paths."""
    sources: list[tuple[str, str]] = []
    for target in targets:
        path = Path(target)
        if path.exists():
            if path.is_dir() and (path / RUN_FILE).is_file():
                sources.append(("csv", str(path)))
                continue
            wandb_files = find_wandb_files(path)
            if wandb_files:
                sources.extend(("wandb", str(f)) for f in wandb_files)
                continue
            if path.is_dir():
                children = sorted(p for p in path.iterdir() if p.is_dir() and (p / RUN_FILE).is_file())
                if children:
                    sources.extend(("csv", str(p)) for p in children)
                    continue
            sources.append(
                (
                    "error",
                    f"{target}: not a run directory (no {RUN_FILE}), not a directory of "
                    "run directories, and no W&B run-*.wandb file inside",
                )
            )
        elif WANDB_PATH.match(target):
            sources.append(("api", target))
        else:
            sources.append(
                (
                    "error",
                    f"{target}: no such file or directory (a W&B run is given as entity/project/run_id)",
                )
            )
    return sources


def ingest(
    targets: Sequence[str | os.PathLike[str]],
    db: str | os.PathLike[str] = DEFAULT_DB,
    *,
    run_id: str | None = None,
    wandb_api: Any = None,
    in_place: bool = False,
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Load run directories / W&B runs into `db` (created if missing); repeatable, only new rows are added.

    The database is updated as a whole: the ingest writes a copy that replaces the file only when it
    succeeded, so readers are never blocked and a failed ingest changes nothing.
    """
    report = IngestReport(str(db))
    sources = expand_sources([str(t) for t in targets])
    if run_id and len(sources) != 1:
        raise ValueError("--run-id needs exactly one run to ingest")
    with writable_copy(db, in_place=in_place) as con:
        create_views(con)
        for kind, path in sources:
            try:
                if kind == "error":
                    raise LogFormatError(path)
                if kind == "csv":
                    result = ingest_run_dir(con, Path(path))
                elif kind == "wandb":
                    result = ingest_wandb_run(con, read_offline_run(Path(path)), run_id)
                else:
                    result = ingest_wandb_run(con, read_api_run(path, api=wandb_api), run_id)
            except (LogFormatError, WandbReadError, OSError, duckdb.Error) as err:
                report.failures.append((path, str(err)))
                continue
            if result.errors:
                con.executemany(
                    "DELETE FROM ingest_errors WHERE run_id = ? AND path = ? AND line IS NOT DISTINCT FROM ?",
                    [(result.run_id, e.path, e.line) for e in result.errors],
                )
                con.executemany(
                    "INSERT INTO ingest_errors VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                    [
                        (result.run_id, e.path, e.line, e.column, e.error_type, e.message, e.raw_line)
                        for e in result.errors
                    ],
                )
            refresh_run_health(con, result.run_id)
            report.runs.append(result)
            if progress:
                progress(result.line())
                for err in result.errors:
                    progress(f"  bad row: {err}")
                for warning in result.warnings:
                    progress(f"  note: {warning}")
        refresh_config_view(con)
    return report
