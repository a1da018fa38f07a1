"""The sweep manifest: ``<runs>/sweeps/<sweep id>/sweep.json`` lists a sweep's variants, seeds and runs.

docs/log-format.md §11. ``sb-train sweep`` writes it (atomically, after every change of a run's state);
``sb-analysis compare --sweep`` and the router explorer read it. The run folders of a sweep are ordinary run
directories next to the ``sweeps`` folder (``<runs>/<run id>/``), so every tool that reads ``<runs>`` sees
them; the manifest names them by run id only, and the whole ``<runs>`` folder can be moved.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import LogFormatError
from .json_files import read_json_object, utc_now, write_json_atomic

SWEEP_FORMAT = "switchbank-sweep"
SWEEP_FORMAT_VERSION = 1
SWEEP_FILE = "sweep.json"
SWEEPS_DIR = "sweeps"
# pending: not started; running: started and not ended (or its process died); stopped: a signal stopped it
# with a checkpoint; the others as status.json's states (§6)
RUN_STATES = ("pending", "running", "finished", "aborted", "stopped", "failed")
SWEEP_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_REQUIRED = {"sweep_id": str, "preset": str, "seeds": list, "variants": list, "runs": list}


def sweep_dir(runs_root: str | Path, sweep_id: str) -> Path:
    """The folder of sweep ``sweep_id`` whose runs live in ``runs_root``."""
    check_sweep_id(sweep_id)
    return Path(runs_root) / SWEEPS_DIR / sweep_id


def runs_root_of(sweep_folder: str | Path) -> Path:
    """The folder that holds a sweep's run folders: two levels above its sweep folder."""
    return Path(sweep_folder).parent.parent


def run_dir_of(sweep_folder: str | Path, run_id: str) -> Path:
    """The run folder of ``run_id`` of the sweep in ``sweep_folder``."""
    return runs_root_of(sweep_folder) / run_id


def check_sweep_id(sweep_id: str) -> None:
    """ValueError unless ``sweep_id`` is a plain folder name (the run-id alphabet, not starting with '.')."""
    if not SWEEP_ID.match(sweep_id):
        raise ValueError(
            f"sweep id {sweep_id!r} must be letters, digits, '.', '_' and '-', not starting with '.', "
            "e.g. --name tiny-ffn"
        )


def write_sweep_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``folder/sweep.json`` atomically (``format``, ``format_version`` and ``updated_at`` set here)."""
    path = Path(folder) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(manifest)
    data.update(format=SWEEP_FORMAT, format_version=SWEEP_FORMAT_VERSION, updated_at=utc_now())
    data.setdefault("created_at", data["updated_at"])
    write_json_atomic(path, data)
    return path


def read_sweep_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of the sweep in ``folder`` (a sweep folder or its sweep.json)."""
    path = Path(folder)
    if path.is_dir():
        path = path / SWEEP_FILE
    if not path.is_file():
        raise LogFormatError(f"{path.parent}: no {SWEEP_FILE}; this is not a sweep folder "
                             "(docs/log-format.md §11); sweeps live in <runs>/sweeps/<sweep id>/")
    data = read_json_object(path)
    if data.get("format") != SWEEP_FORMAT:
        raise LogFormatError(f"{path}: 'format' is {data.get('format')!r}, expected {SWEEP_FORMAT!r}")
    if data.get("format_version") != SWEEP_FORMAT_VERSION:
        raise LogFormatError(f"{path}: format_version {data.get('format_version')!r} is not supported (this "
                             f"code reads version {SWEEP_FORMAT_VERSION}); upgrade the reader")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise LogFormatError(f"{path}: '{key}' must be a {kind.__name__}, got {data.get(key)!r}")
    for run in data["runs"]:
        if not (isinstance(run, dict) and isinstance(run.get("run_id"), str)
                and isinstance(run.get("variant"), str) and isinstance(run.get("seed"), int)):
            raise LogFormatError(f"{path}: every entry of 'runs' needs run_id, variant and seed; got {run!r}")
    return data


def list_sweeps(runs_roots: Iterable[str | Path]) -> list[Path]:
    """The sweep folders (holding a sweep.json) under ``<root>/sweeps/`` of each root, sorted by path."""
    found: set[Path] = set()
    for root in runs_roots:
        folder = Path(root) / SWEEPS_DIR
        if folder.is_dir():
            found.update(p.parent for p in folder.glob(f"*/{SWEEP_FILE}") if p.is_file())
    return sorted(found)


def find_sweep(id_or_dir: str | Path, runs_roots: Iterable[str | Path] = ("runs",)) -> Path:
    """The sweep folder named by ``id_or_dir``: a sweep folder, its sweep.json, or a sweep id looked up in
    ``<root>/sweeps/`` of each root. FileNotFoundError naming the places searched and the sweeps found."""
    given = Path(id_or_dir)
    if given.is_file() and given.name == SWEEP_FILE:
        return given.parent
    if (given / SWEEP_FILE).is_file():
        return given
    roots = [Path(r) for r in runs_roots]
    text = str(id_or_dir)
    if SWEEP_ID.match(text):
        for root in roots:
            if (root / SWEEPS_DIR / text / SWEEP_FILE).is_file():
                return root / SWEEPS_DIR / text
    known = [p.name for p in list_sweeps(roots)]
    where = ", ".join(str(r / SWEEPS_DIR) for r in roots) or "(no folder given)"
    raise FileNotFoundError(
        f"no sweep {text!r}: not a sweep folder and not a sweep id under {where}; "
        + (f"sweeps there: {', '.join(known[:20])}" if known else "no sweeps there")
        + " (give the sweep folder, or its id with --runs DIR)"
    )
