"""The JSON files of a run directory: written atomically (temp file + rename), read back checked."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import LogFormatError


def utc_now() -> str:
    """The current UTC time as the format writes it, e.g. ``2026-11-23T09:15:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to a temp file in the same directory, then rename it over ``path``: a reader always
    sees a complete document (docs/log-format.md §1, "Atomic JSON")."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; LogFormatError when it is not valid JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LogFormatError(
            f"{path}: not valid JSON ({err}); the writer must replace it atomically"
        ) from err
    if not isinstance(data, dict):
        raise LogFormatError(f"{path}: expected a JSON object")
    return data
