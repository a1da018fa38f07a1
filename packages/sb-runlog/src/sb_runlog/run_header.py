"""run.json: the run header a writer builds and a reader checks (docs/log-format.md §2), and config_hash."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import LogFormatError
from .json_files import read_json_object, utc_now
from .layout import FORMAT_NAME, FORMAT_VERSION, RUN_FILE

RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")
ROUTER_STATS_SCOPES = ("global", "rank0")


def config_hash(config: Mapping[str, Any]) -> str:
    """``sha256:`` + the hex SHA-256 of the config as compact JSON with sorted keys."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def new_run_header(
    run_id: str,
    preset: str,
    config: Mapping[str, Any],
    *,
    num_layers: int,
    num_experts: int,
    top_k: int,
    tokens_per_step: int,
    total_steps: int,
    world_size: int = 1,
    device: str = "cpu",
    router_stats_scope: str = "global",
    created_at: str | None = None,
    resumed_from: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete run.json header (``git_sha``/``wandb`` start as None; callers may add keys)."""
    if not RUN_ID.match(run_id):
        raise LogFormatError(f"run_id {run_id!r} must match [A-Za-z0-9._-]+")
    if router_stats_scope not in ROUTER_STATS_SCOPES:
        raise ValueError(
            f"router_stats_scope must be one of {ROUTER_STATS_SCOPES} (got {router_stats_scope!r})"
        )
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "preset": preset,
        "config": dict(config),
        "config_hash": config_hash(config),
        "created_at": created_at or utc_now(),
        "git_sha": None,
        "git_dirty": False,
        "host": os.uname().nodename,
        "world_size": world_size,
        "device": device,
        "num_layers": num_layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "tokens_per_step": tokens_per_step,
        "total_steps": total_steps,
        "router_stats_scope": router_stats_scope,
        "wandb": None,
        "resumed_from": dict(resumed_from) if resumed_from is not None else None,
    }


def check_run_header(header: Mapping[str, Any], where: str) -> None:
    """LogFormatError unless ``header`` names this format, a version this code reads, and a valid run id."""
    if header.get("format") != FORMAT_NAME:
        raise LogFormatError(f"{where}: 'format' is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise LogFormatError(
            f"{where}: format_version {version!r} is not supported (this code reads version "
            f"{FORMAT_VERSION}); upgrade the reader"
        )
    run_id = header.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise LogFormatError(f"{where}: 'run_id' must be a string of [A-Za-z0-9._-], got {run_id!r}")


def read_run_header(run_dir: Path) -> dict[str, Any]:
    """The checked contents of ``run_dir/run.json``."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise LogFormatError(
            f"{run_dir}: no {RUN_FILE}; this is not a SwitchBank run directory (docs/log-format.md). "
            "For a W&B offline run pass its offline-run-* directory."
        )
    header = read_json_object(path)
    check_run_header(header, str(path))
    return header
