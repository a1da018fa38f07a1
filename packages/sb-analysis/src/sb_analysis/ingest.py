"""`sb-analysis ingest`: run directories and W&B runs into the database, idempotently and incrementally."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from sb_runlog import RUN_FILE, TABLES, LogFormatError, TableSpec, read_run_header, read_status, segment_files

from .csv_ingest import load_plans
from .csv_plan import FilePlan, FileResult, RowError, file_states, plan_file
from .db import DB_TABLES, DEFAULT_DB, writable_copy
from .derive import derive_layers, refresh_router_steps
from .loader import ensure_columns, upsert_staged
from .run_rows import check_header_fields, csv_run_row, insert_columns, json_or_none, store_runs, timestamp
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


def ingest_run_dirs(
    con: duckdb.DuckDBPyConnection, run_dirs: Sequence[Path], replace: bool = False
) -> tuple[list[RunResult], list[tuple[str, str]]]:
    """Ingest CSV run directories together (their files are read in batches). Returns results, failures."""
    failures: list[tuple[str, str]] = []
    runs: dict[str, tuple[Path, dict[str, Any], dict[str, Any]]] = {}
    for run_dir in run_dirs:
        try:
            header = read_run_header(run_dir)
            status = read_status(run_dir)
        except (LogFormatError, OSError) as err:
            failures.append((str(run_dir), str(err)))
            continue
        bad = check_header_fields(header, str(run_dir / RUN_FILE))
        if bad:
            failures.append((str(run_dir), bad))
            continue
        if header["run_id"] in runs:
            failures.append(
                (str(run_dir), f"run id {header['run_id']!r} also used by {runs[header['run_id']][0]}")
            )
            continue
        runs[header["run_id"]] = (run_dir, header, status)
    refused = store_runs(
        con,
        [csv_run_row(d, h, s) for d, h, s in runs.values()],
        {run_id: h.get("config") or {} for run_id, (_, h, _) in runs.items()},
        replace=replace,
    )
    for run_id, reason in refused:
        failures.append((str(runs.pop(run_id)[0]), reason))
    states = file_states(con, list(runs))
    results: dict[str, RunResult] = {}
    plans: list[FilePlan] = []
    per_run_files: dict[str, list[tuple[TableSpec, FileResult]]] = {}
    for run_id, (run_dir, header, status) in runs.items():
        results[run_id] = RunResult(run_id, "csv", str(run_dir))
        finished = status.get("state", "running") != "running"
        files = per_run_files.setdefault(run_id, [])
        for spec in TABLES.values():
            for segment, path in enumerate(segment_files(run_dir, spec.name)):
                planned = plan_file(
                    run_id,
                    path,
                    spec,
                    segment,
                    states=states,
                    n_experts=header.get("num_experts"),
                    finished=finished,
                )
                if isinstance(planned, FilePlan):
                    plans.append(planned)
                    files.append((spec, planned.result))
                else:
                    files.append((spec, planned))
    load_plans(con, plans)
    for run_id, files in per_run_files.items():
        result = results[run_id]
        for spec in TABLES.values():
            result.new_rows.setdefault(DB_TABLES[spec.name], 0)
            result.replaced_rows.setdefault(DB_TABLES[spec.name], 0)
        for spec, file_result in files:
            result.new_rows[DB_TABLES[spec.name]] += file_result.new_rows
            result.replaced_rows[DB_TABLES[spec.name]] += file_result.replaced_rows
            result.errors.extend(file_result.errors)
            if file_result.pending and file_result.pending not in file_result.errors:
                result.warnings.append(str(file_result.pending))
    return list(results.values()), failures


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
    result = upsert_staged(con, table, "_sb_new", key)
    if table == "router_layers":
        refresh_router_steps(con, "_sb_new")
    con.execute("DROP TABLE IF EXISTS _sb_new")
    return result.get(run_id, (0, 0))


def ingest_wandb_run(
    con: duckdb.DuckDBPyConnection, run: WandbRun, run_id: str | None = None, replace: bool = False
) -> RunResult:
    run_id = run_id or f"wandb-{run.wandb_id}"
    config = run.config
    n_experts = config.get("num_experts") or config.get("n_experts")
    if n_experts is None and "load" in run.router.columns:
        n_experts = int(run.router["load"].list.len().max())  # type: ignore[arg-type]
    refused = store_runs(
        con,
        [
            {
                "run_id": run_id,
                "source": run.source,
                "path": run.path,
                "preset": config.get("preset"),
                "config_hash": None,
                "config": json_or_none(config),
                "created_at": timestamp(run.created_at),
                "host": run.host,
                "num_layers": config.get("num_layers"),
                "num_experts": n_experts,
                "top_k": config.get("topk") or config.get("top_k"),
                "total_steps": config.get("num_iterations") or config.get("total_steps"),
                "state": run.state,
                "status": json_or_none({"state": run.state, "summary": run.summary}),
                "wandb_run_id": run.wandb_id,
                "wandb_project": run.project,
                "format_version": None,
            }
        ],
        {run_id: config},
        replace=replace,
    )
    if refused:
        raise LogFormatError(refused[0][1])
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
    replace: bool = False,
    lock_wait_s: float = 30.0,
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Load run directories / W&B runs into `db` (created if missing); repeatable, only new rows are added.

    The database is updated as a whole: the ingest writes a copy that replaces the file only when it
    succeeded, so readers are never blocked and a failed ingest changes nothing. A run id stored earlier
    from another folder is refused unless `replace` (then the stored run is dropped first); a run whose
    run.json has a bad field is reported and skipped, the others load. With `in_place` the ingest waits
    up to `lock_wait_s` for readers that hold the file, then raises DatabaseBusyError saying what to do.
    """
    report = IngestReport(str(db))
    sources = expand_sources([str(t) for t in targets])
    if run_id and len(sources) != 1:
        raise ValueError("--run-id needs exactly one run to ingest")
    with writable_copy(db, in_place=in_place, lock_wait_s=lock_wait_s) as con:
        create_views(con)
        by_path: dict[str, RunResult] = {}
        csv_dirs = [Path(path) for kind, path in sources if kind == "csv"]
        if csv_dirs:
            results, failures = ingest_run_dirs(con, csv_dirs, replace=replace)
            report.failures.extend(failures)
            by_path.update((r.path, r) for r in results)
        for kind, path in sources:
            if kind in ("csv",):
                continue
            try:
                if kind == "error":
                    raise LogFormatError(path)
                if kind == "wandb":
                    result = ingest_wandb_run(con, read_offline_run(Path(path)), run_id, replace)
                else:
                    result = ingest_wandb_run(con, read_api_run(path, api=wandb_api), run_id, replace)
            except (LogFormatError, WandbReadError, OSError, duckdb.Error) as err:
                report.failures.append((path, str(err)))
                continue
            by_path[path] = result
        report.runs = [by_path[path] for _, path in sources if path in by_path]
        _store_errors(con, report.runs)
        # the cached health summary changes only with new rows (or for a run not summarised yet)
        summarised = {row[0] for row in con.execute("SELECT run_id FROM run_health").fetchall()}
        touched = [
            r.run_id
            for r in report.runs
            if r.run_id not in summarised
            or any(r.new_rows.values())
            or any(r.replaced_rows.values())
        ]
        if touched:
            refresh_run_health(con, touched)
        refresh_config_view(con)
    if progress:
        for result in report.runs:
            progress(result.line())
            for err in result.errors:
                progress(f"  bad row: {err}")
            for warning in result.warnings:
                progress(f"  note: {warning}")
    return report


def _store_errors(con: duckdb.DuckDBPyConnection, runs: Sequence[RunResult]) -> None:
    errors = [(r.run_id, e) for r in runs for e in r.errors]
    if not errors:
        return
    con.execute(
        "DELETE FROM ingest_errors t USING (SELECT unnest(?::VARCHAR[]) AS run_id, "
        "unnest(?::VARCHAR[]) AS path, unnest(?::BIGINT[]) AS line) k "
        "WHERE t.run_id = k.run_id AND t.path = k.path AND t.line IS NOT DISTINCT FROM k.line",
        [[r for r, _ in errors], [e.path for _, e in errors], [e.line for _, e in errors]],
    )
    insert_columns(
        con,
        "ingest_errors",
        {
            "run_id": ("VARCHAR", [r for r, _ in errors]),
            "path": ("VARCHAR", [e.path for _, e in errors]),
            "line": ("BIGINT", [e.line for _, e in errors]),
            "column_name": ("VARCHAR", [e.column for _, e in errors]),
            "error_type": ("VARCHAR", [e.error_type for _, e in errors]),
            "message": ("VARCHAR", [e.message for _, e in errors]),
            "raw_line": ("VARCHAR", [e.raw_line for _, e in errors]),
        },
    )
    con.execute("UPDATE ingest_errors SET ingested_at = now() WHERE ingested_at IS NULL")
