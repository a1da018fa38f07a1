"""status.json: the run's state (docs/log-format.md §6), rewritten atomically; absent means running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .json_files import read_json_object, utc_now, write_json_atomic
from .layout import FORMAT_NAME, FORMAT_VERSION, STATUS_FILE

STATES = ("running", "finished", "aborted", "failed")
# the optional keys of §6; a writer may add further JSON values
OPTIONAL_STATUS_KEYS = ("final_val_loss", "best_val_loss", "best_val_step", "abort_reason", "error")


def check_state(state: str) -> None:
    """ValueError unless ``state`` is one of :data:`STATES`."""
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES} (got {state!r})")


def write_status(
    run_dir: Path, run_id: str, state: str, step: int, total_steps: int, time_ms: float, **extra: Any
) -> None:
    """Rewrite ``run_dir/status.json`` atomically; ``extra`` adds keys (e.g. ``best_val_loss``)."""
    check_state(state)
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


def read_status(run_dir: Path) -> dict[str, Any]:
    """``run_dir/status.json``, or ``{"state": "running"}`` when the file does not exist yet."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {"state": "running"}
    return read_json_object(path)
