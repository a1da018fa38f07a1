"""Where things are in a run directory: the format's name and version, file names, table segments.

docs/log-format.md §1-2. A table ``X`` is stored as ``X.csv``, then ``X.1.csv``, ``X.2.csv``, ... when its
column set had to change; readers read the segments in that order and later rows win.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_NAME = "switchbank-run"
FORMAT_VERSION = 1

RUN_FILE = "run.json"
STATUS_FILE = "status.json"
WANDB_DIR = "wandb"


def segment_name(table: str, index: int) -> str:
    """The file name of segment ``index`` of a table: ``X.csv`` for 0, ``X.<index>.csv`` after it."""
    if index < 0:
        raise ValueError(f"segment index must be >= 0 (got {index})")
    return f"{table}.csv" if index == 0 else f"{table}.{index}.csv"


def segment_index(table: str, file_name: str) -> int | None:
    """The segment index a file name stands for in ``table``, or None when it is no segment of it."""
    if file_name == f"{table}.csv":
        return 0
    match = re.fullmatch(rf"{re.escape(table)}\.(\d+)\.csv", file_name)
    return int(match.group(1)) if match else None


def segment_files(run_dir: Path, table: str) -> list[Path]:
    """The segment files of ``table`` in ``run_dir``, in reading order (``X.csv``, ``X.1.csv``, ...)."""
    found: list[tuple[int, Path]] = []
    for path in Path(run_dir).iterdir():
        index = segment_index(table, path.name)
        if index is not None and path.is_file():
            found.append((index, path))
    return [path for _, path in sorted(found)]
