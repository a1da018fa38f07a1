"""W&B runs -> the same tables as CSV runs.

Offline runs: wandb 0.31 has no Python reader for the binary `.wandb` transaction log; its `wandb leet
inspect --json` command prints one JSON record per line (and reads files that are still being written).
That command is a thin wrapper around the `wandb-core` binary shipped inside the wandb wheel, so we call
the binary directly (milliseconds instead of seconds of Python start-up) and fall back to the `wandb`
command when the binary cannot be found.

Online runs: `wandb.Api().run("entity/project/run_id")` with `scan_history` (every row, paged).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from sb_runlog import EXPERT_FAMILIES
from sb_runlog.columns import ROUTER_COLUMNS, SCALARS_COLUMNS
from sb_runlog.header_check import EXPERT_COLUMN
from sb_runlog.wandb_names import scalar_column, scalar_key, split_layer_key

WANDB_PATH = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+$")

POLARS_TYPES = {"BIGINT": pl.Int64, "INTEGER": pl.Int32, "DOUBLE": pl.Float64, "VARCHAR": pl.String}


class WandbReadError(RuntimeError):
    """The W&B run could not be read."""


@dataclass
class WandbRun:
    """One W&B run, converted: metadata plus `steps` and `router` frames in the tables' column names."""

    wandb_id: str
    project: str | None
    entity: str | None
    config: dict[str, Any]
    state: str
    created_at: str | None
    host: str | None
    source: str
    path: str
    steps: pl.DataFrame
    router: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        special = {
            "NaN": math.nan,
            "nan": math.nan,
            "Infinity": math.inf,
            "inf": math.inf,
            "-Infinity": -math.inf,
            "-inf": -math.inf,
        }
        return special.get(value)
    return None


def column_plan(keys: Iterable[str]) -> tuple[dict[str, str | None], dict[str, str], list[str]]:
    """Where each W&B key goes: ({scalar key: column or None}, {layer key suffix: router column}, notes).

    Keys that map to the same column (``loss`` and ``train/loss``; ``Foo`` and ``foo``) never overwrite
    each other: the key that is the column's own W&B name (else the first in sorted order) keeps the
    column, the others get ``<column>__2``, ``__3`` ..., and each such clash is reported as a note.
    """
    scalar: dict[str, str | None] = {}
    suffixes: dict[str, str] = {}
    for key in sorted(set(keys)):
        if key.startswith("router_layer/"):
            split = split_layer_key(key)
            if split is not None:
                suffixes[key.split("/", 2)[2]] = split[1]
                continue
        scalar[key] = scalar_column(key)
    notes: list[str] = []
    notes += _split_clashes(scalar, lambda column, key: scalar_key(column) == key, "")
    notes += _split_clashes(suffixes, lambda column, key: key == column, "router_layer/{i}/")  # type: ignore[arg-type]
    return scalar, suffixes, notes


def _split_clashes(mapping: dict[str, str | None], canonical: Any, label: str) -> list[str]:
    by_column: dict[str, list[str]] = {}
    for key, column in mapping.items():
        if column is not None:
            by_column.setdefault(column, []).append(key)
    taken = {c for c in by_column}
    notes = []
    for column, keys in by_column.items():
        if len(keys) < 2:
            continue
        keys = sorted(keys, key=lambda k: (not canonical(column, k), k))
        moved = []
        n = 2
        for key in keys[1:]:
            while f"{column}__{n}" in taken:
                n += 1
            mapping[key] = f"{column}__{n}"
            taken.add(mapping[key])
            moved.append(f"{label}{key!s} -> {mapping[key]}")
        notes.append(
            f"W&B keys {', '.join(repr(label + k) for k in keys)} all map to column {column!r}: "
            f"{label}{keys[0]} keeps it, {'; '.join(moved)} (nothing overwritten)"
        )
    return notes


def history_to_frames(
    items: Iterable[Mapping[str, Any]], notes: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """W&B history rows (flat dicts with `_step`) -> (steps frame, router frame) in our column names.

    Keys that would land in the same column are kept apart (see `column_plan`); the clashes are appended
    to `notes` when given."""
    items = list(items)
    scalar, suffixes, clash_notes = column_plan(key for item in items for key in item)
    if notes is not None:
        notes.extend(clash_notes)
    steps: dict[int, dict[str, float | None]] = {}
    layers: dict[tuple[int, int], dict[str, Any]] = {}
    for item in items:
        raw_step = item.get("_step")
        if raw_step is None:
            continue
        step = int(raw_step)
        row = steps.setdefault(step, {"step": step})
        for key, value in item.items():
            number = _number(value)
            if number is None:
                continue
            if key in scalar:
                column = scalar[key]
                if column is not None:
                    row[column] = number
                continue
            layer_value = split_layer_key(key)
            if layer_value is None:
                continue
            layer = layer_value[0]
            name = suffixes[key.split("/", 2)[2]]
            lrow = layers.setdefault((step, layer), {"step": step, "layer": layer})
            expert = EXPERT_COLUMN.match(name)
            if expert:
                lrow.setdefault("_" + expert.group(1), {})[int(expert.group(2))] = number
            else:
                lrow[name] = number
    steps_df = _typed_frame(list(steps.values()), SCALARS_COLUMNS)
    router_rows = []
    for lrow in layers.values():
        for family in EXPERT_FAMILIES:
            values = lrow.pop("_" + family, None)
            if values is not None:
                lrow[family] = [values.get(i) for i in range(max(values) + 1)]
        router_rows.append(lrow)
    router_df = _typed_frame(router_rows, ROUTER_COLUMNS)
    return steps_df, router_df


def _typed_frame(rows: list[dict[str, Any]], declared: Mapping[str, str]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame()
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    schema: dict[str, Any] = {}
    for name in names:
        if name in EXPERT_FAMILIES:
            schema[name] = pl.List(pl.Float64)
        else:
            schema[name] = POLARS_TYPES[declared.get(name, "DOUBLE")]
    data = {name: [row.get(name) for row in rows] for name in names}
    ints = {name for name, typ in schema.items() if typ in (pl.Int64, pl.Int32)}
    for name in ints:
        data[name] = [
            None if v is None or (isinstance(v, float) and not math.isfinite(v)) else int(v)
            for v in data[name]
        ]
    return pl.DataFrame(data, schema=schema).sort([c for c in ("step", "layer") if c in schema])


# ---------------------------------------------------------------- offline (.wandb files)


def find_wandb_files(path: Path) -> list[Path]:
    """The `.wandb` transaction logs under a path: the file itself, a run dir, or a `wandb/` dir."""
    if path.is_file():
        return [path] if path.suffix == ".wandb" else []
    if not path.is_dir():
        return []
    direct = sorted(path.glob("run-*.wandb"))
    if direct:
        return direct[-1:]
    found = []
    for sub in sorted(path.iterdir()):
        if sub.is_dir() and re.match(r"^(offline-)?run-", sub.name):
            files = sorted(sub.glob("run-*.wandb"))
            if files:
                found.append(files[-1])
    return found


def _core_binary() -> str | None:
    spec = importlib.util.find_spec("wandb")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "wandb-core"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def inspect_command(wandb_file: Path) -> list[str]:
    """The command that prints the records of a `.wandb` file as JSON lines."""
    core = os.environ.get("SB_ANALYSIS_WANDB_CORE") or _core_binary()
    if core:
        return [
            core,
            "leet",
            "inspect",
            "--no-observability",
            "--json",
            "--run-file",
            str(wandb_file),
            str(wandb_file.parent.parent),
        ]
    cli = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    return [cli, "leet", "inspect", "--json", str(wandb_file)]


def read_records(wandb_file: Path, timeout_s: float = 300.0) -> tuple[list[dict[str, Any]], str]:
    """All complete records of a `.wandb` file (a truncated file gives its complete prefix) + stderr."""
    command = inspect_command(wandb_file)
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "WANDB_SILENT": "true"},
        )
    except FileNotFoundError as err:
        raise WandbReadError(
            f"cannot run {command[0]!r} to read {wandb_file}; install wandb>=0.31 (it ships `wandb leet`)"
        ) from err
    if proc.returncode != 0:
        raise WandbReadError(
            f"`{' '.join(command[:3])}` failed on {wandb_file} (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}"
        )
    records = []
    for number, line in enumerate(proc.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise WandbReadError(
                f"{wandb_file}: record {number} of the inspector output is not JSON"
            ) from None
    return records, proc.stderr


def _config_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config from a run record: wandb wraps it as {"update": {...}} and adds `_wandb`."""
    values = config.get("update", config) if isinstance(config, Mapping) else {}
    return {k: v for k, v in values.items() if k != "_wandb"}


def read_offline_run(wandb_file: Path) -> WandbRun:
    records, stderr = read_records(wandb_file)
    config: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code: int | None = None
    for record in records:
        kind = record.get("type")
        body = record.get(kind, {}) if isinstance(kind, str) else {}
        if kind == "run":
            meta = body
            config.update(_config_values(body.get("config", {})))
        elif kind == "config":
            config.update(_config_values(body))
        elif kind == "history":
            history.append(body.get("item", {}))
        elif kind == "summary":
            summary.update(body.get("update", {}))
        elif kind == "exit":
            exit_code = int(body.get("exit_code", 0))
    if not meta:
        raise WandbReadError(f"{wandb_file}: no run record; is this a W&B transaction log?")
    clashes: list[str] = []
    steps, router = history_to_frames(history, clashes)
    state = "running" if exit_code is None else ("finished" if exit_code == 0 else "failed")
    warnings = clashes + [line for line in stderr.splitlines() if line.strip()]
    return WandbRun(
        wandb_id=str(meta.get("run_id")),
        project=meta.get("project"),
        entity=meta.get("entity"),
        config=config,
        state=state,
        created_at=meta.get("start_time"),
        host=meta.get("host"),
        source="wandb-offline",
        path=str(wandb_file),
        steps=steps,
        router=router,
        summary=summary,
        warnings=warnings,
    )


# ---------------------------------------------------------------- online (W&B API)


def read_api_run(path: str, api: Any = None, page_size: int = 1000) -> WandbRun:
    """Read `entity/project/run_id` through the W&B public API (needs a network and an API key).

    `api` may be any object with a `.run(path)` method returning a run with `.id`, `.project`, `.entity`,
    `.config`, `.summary`, `.state`, `.created_at` and `.scan_history(page_size=...)`; tests pass a fake.
    """
    if api is None:
        if not (os.environ.get("WANDB_API_KEY") or Path.home().joinpath(".netrc").is_file()):
            raise WandbReadError(
                f"cannot read {path} from W&B: no API key (set WANDB_API_KEY or run `wandb login`); "
                "for an offline run pass its offline-run-* directory instead"
            )
        import wandb

        api = wandb.Api(timeout=60)
    try:
        run = api.run(path)
    except Exception as err:
        raise WandbReadError(f"W&B API could not open {path}: {err}") from err
    history: Iterator[Mapping[str, Any]] = iter(run.scan_history(page_size=page_size))
    clashes: list[str] = []
    steps, router = history_to_frames(history, clashes)
    config = {k: v for k, v in dict(run.config).items() if k != "_wandb"}
    return WandbRun(
        wandb_id=str(run.id),
        project=getattr(run, "project", None),
        entity=getattr(run, "entity", None),
        config=config,
        state=str(getattr(run, "state", "unknown")),
        created_at=getattr(run, "created_at", None),
        host=None,
        source="wandb-api",
        path=path,
        steps=steps,
        router=router,
        summary=dict(getattr(run, "summary", {}) or {}),
        warnings=clashes,
    )
