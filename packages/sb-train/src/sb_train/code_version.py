"""Which code a run used (git commit, uncommitted changes) and unique run ids.

Both go into `run.json` (docs/log-format.md §2: `run_id`, `git_sha`, `git_dirty`). Nothing here raises:
a machine without git, or a checkout that is not a git repository, gives ``git_sha = None``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from sb_runlog.run_header import RUN_ID as RUN_ID_PATTERN  # the run-id rule of the format

GIT_TIMEOUT_S = 5.0


def _git(args: list[str], cwd: Path) -> str | None:
    """Output of one git command, or None when git is missing, fails or hangs."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_version(path: str | os.PathLike[str] | None = None) -> dict[str, str | bool | None]:
    """``{"git_sha": str | None, "git_dirty": bool}`` of the repository containing ``path``.

    ``path`` defaults to this package's source directory (the code that is actually running). Untracked
    files count as changes. ``git status`` is run with optional locks off, so it never blocks another git
    process (or another rank) working in the same repository.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent
    if not where.is_dir():
        return {"git_sha": None, "git_dirty": False}
    sha = _git(["rev-parse", "--verify", "--quiet", "HEAD"], where)
    if sha is None or not sha.strip():
        return {"git_sha": None, "git_dirty": False}
    status = _git(["status", "--porcelain", "--untracked-files=normal"], where)
    return {"git_sha": sha.strip(), "git_dirty": bool(status and status.strip())}


def _safe(text: str) -> str:
    """``text`` reduced to the run-id alphabet: other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def make_run_id(preset: str, seed: int | None, *, now: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-<preset>-s<seed>-<4 hex>`` (UTC), e.g. ``20261123-091500-record-s0-3fa2``.

    The random suffix keeps ids unique when several runs start in the same second. Characters of the preset
    outside ``[A-Za-z0-9._-]`` are replaced by ``-``; ``seed=None`` gives ``snone``.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    seed_part = "snone" if seed is None else f"s{seed}"
    run_id = f"{stamp}-{_safe(preset)}-{_safe(seed_part)}-{secrets.token_hex(2)}"
    assert RUN_ID_PATTERN.match(run_id), run_id
    return run_id
