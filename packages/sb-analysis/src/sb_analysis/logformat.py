"""The run-directory format of docs/log-format.md: file names, declared column types, header checks.

Readers never sniff types: every column listed here has a declared DuckDB type, and any other column is a
DOUBLE metric. This module is the single place where the format is encoded on the reading side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_NAME = "switchbank-run"
FORMAT_VERSION = 1

RUN_FILE = "run.json"
STATUS_FILE = "status.json"

COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
EXPERT_COLUMN = re.compile(r"^(load|demand|importance)_e(\d+)$")
EXPERT_FAMILIES = ("load", "demand", "importance")

SCALARS_COLUMNS: dict[str, str] = {
    "step": "BIGINT",
    "time_ms": "DOUBLE",
    "wall_time": "DOUBLE",
    "tokens": "BIGINT",
    "loss": "DOUBLE",
    "loss_main": "DOUBLE",
    "loss_aux": "DOUBLE",
    "val_loss": "DOUBLE",
    "val_tokens": "BIGINT",
    "momentum": "DOUBLE",
    "router_temp": "DOUBLE",
    "logit_cap": "DOUBLE",
    "gumbel_scale": "DOUBLE",
    "window_blocks": "BIGINT",
    "active_experts": "BIGINT",
    "router_grad_norm": "DOUBLE",
    "router_clip": "DOUBLE",
    "router_clipped": "INTEGER",
    "grad_norm": "DOUBLE",
    "router_imp_cv2": "DOUBLE",
    "router_load_cv2": "DOUBLE",
    "router_usage_frac": "DOUBLE",
    "router_topk_prob_mean": "DOUBLE",
    "router_max_logit": "DOUBLE",
    "peak_mem_mib": "DOUBLE",
}

ROUTER_COLUMNS: dict[str, str] = {
    "step": "BIGINT",
    "layer": "INTEGER",
    "tokens": "BIGINT",
    "imp_cv2": "DOUBLE",
    "load_cv2": "DOUBLE",
    "usage_frac": "DOUBLE",
    "topk_prob_mean": "DOUBLE",
    "imp_entropy": "DOUBLE",
    "load_entropy": "DOUBLE",
    "entropy_mean": "DOUBLE",
    "max_logit": "DOUBLE",
    "aux_loss": "DOUBLE",
    "z_loss": "DOUBLE",
    "drop_frac": "DOUBLE",
    "ema_alpha_forward": "DOUBLE",
    "ema_alpha_reverse": "DOUBLE",
    "collapsed": "INTEGER",
}

DOMAIN_COLUMNS: dict[str, str] = {
    "step": "BIGINT",
    "layer": "INTEGER",
    "domain": "VARCHAR",
    "expert": "INTEGER",
    "tokens": "BIGINT",
}


@dataclass(frozen=True)
class TableSpec:
    """One CSV table of the format: its file stem, declared columns, required columns and key."""

    kind: str
    stem: str
    declared: dict[str, str]
    required: tuple[str, ...]
    key: tuple[str, ...]
    db_table: str


TABLES: dict[str, TableSpec] = {
    "scalars": TableSpec("scalars", "scalars", SCALARS_COLUMNS, ("step", "time_ms"), ("step",), "steps"),
    "router": TableSpec(
        "router", "router", ROUTER_COLUMNS, ("step", "layer"), ("step", "layer"), "router_layers"
    ),
    "domains": TableSpec(
        "domains",
        "domains",
        DOMAIN_COLUMNS,
        ("step", "layer", "domain", "expert", "tokens"),
        ("step", "layer", "domain", "expert"),
        "domain_load",
    ),
}


class LogFormatError(ValueError):
    """A run directory or file that does not follow docs/log-format.md."""


def segment_files(run_dir: Path, spec: TableSpec) -> list[Path]:
    """`X.csv`, then `X.1.csv`, `X.2.csv`, ... in numeric order (the segments of one table)."""
    found: list[tuple[int, Path]] = []
    first = run_dir / f"{spec.stem}.csv"
    if first.is_file():
        found.append((0, first))
    pattern = re.compile(rf"^{re.escape(spec.stem)}\.(\d+)\.csv$")
    for path in run_dir.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def column_types(spec: TableSpec, header: list[str]) -> dict[str, str]:
    """Declared DuckDB type of every header column, in header order; unknown columns are DOUBLE.

    Raises LogFormatError for a bad name, a duplicate, a missing required column or an incomplete
    per-expert family.
    """
    seen: set[str] = set()
    for name in header:
        if not COLUMN_NAME.match(name):
            raise LogFormatError(
                f"column name {name!r} is not of the form [a-z][a-z0-9_]* (docs/log-format.md §1)"
            )
        if name in seen:
            raise LogFormatError(f"column {name!r} appears twice in the header")
        seen.add(name)
    missing = [name for name in spec.required if name not in seen]
    if missing:
        raise LogFormatError(f"required column(s) {', '.join(missing)} missing from the header")
    if spec.kind == "router":
        expert_counts(header)
    return {name: spec.declared.get(name, "DOUBLE") for name in header}


def expert_counts(header: list[str]) -> dict[str, int]:
    """Number of experts in each per-expert family present in a router header (0..n-1 must all exist)."""
    indices: dict[str, set[int]] = {}
    for name in header:
        match = EXPERT_COLUMN.match(name)
        if match:
            indices.setdefault(match.group(1), set()).add(int(match.group(2)))
    counts: dict[str, int] = {}
    for family, got in indices.items():
        n = max(got) + 1
        if got != set(range(n)):
            gaps = sorted(set(range(n)) - got)
            raise LogFormatError(
                f"per-expert columns {family}_e* are incomplete: missing "
                + ", ".join(f"{family}_e{i}" for i in gaps)
            )
        counts[family] = n
    return counts


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LogFormatError(
            f"{path}: not valid JSON ({err}); the writer must replace it atomically"
        ) from err
    if not isinstance(data, dict):
        raise LogFormatError(f"{path}: expected a JSON object")
    return data


def read_run_header(run_dir: Path) -> dict[str, Any]:
    """The checked contents of `run.json`."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise LogFormatError(
            f"{run_dir}: no {RUN_FILE}; this is not a SwitchBank run directory (docs/log-format.md). "
            "For a W&B offline run pass its offline-run-* directory."
        )
    header = read_json_file(path)
    if header.get("format") != FORMAT_NAME:
        raise LogFormatError(f"{path}: 'format' is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise LogFormatError(
            f"{path}: format_version {version!r} is not supported by this sb-analysis (reads version "
            f"{FORMAT_VERSION}); upgrade sb-analysis"
        )
    run_id = header.get("run_id")
    if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", run_id):
        raise LogFormatError(f"{path}: 'run_id' must be a string of [A-Za-z0-9._-], got {run_id!r}")
    return header


def read_status(run_dir: Path) -> dict[str, Any]:
    """`status.json`, or a 'running' status when the file does not exist yet."""
    path = run_dir / STATUS_FILE
    if not path.is_file():
        return {"state": "running"}
    return read_json_file(path)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": value}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat
