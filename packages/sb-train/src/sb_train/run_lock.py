"""One trainer per run folder: an exclusive ``flock`` on ``<run dir>/.lock`` for as long as the run lives.

Rank 0 takes the lock before it writes anything into the run folder. A second trainer on the same folder
(another ``--resume`` of the run, or a new run with the same ``run.run_name``) fails to take it and stops
with :class:`~sb_train.errors.RunLockedError`, naming the holder's pid and host (which the holder writes into
the file). The kernel drops a ``flock`` when its process dies, however it dies, so the lock of a killed
trainer never blocks the next one; the ``.lock`` file itself stays behind (harmless: readers ignore it).
A lock belongs to one open file description, so two trainers in one process exclude each other too.
``flock`` is advisory and local to one machine on some network file systems (docs/design/training.md,
checkpoints and resume).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from sb_train.errors import RunLockedError

__all__ = ["LOCK_FILE", "RunLock"]

LOCK_FILE = ".lock"


class RunLock:
    """``RunLock(run_dir).acquire()`` ... ``release()`` (or ``with RunLock(run_dir):``); see the module
    docstring. :meth:`acquire` creates the run folder when it does not exist."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file: IO[str] | None = None
        self.created_dir = False

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise `RunLockedError` at once (it never waits)."""
        if self._file is not None:
            return self
        self.created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLockedError(
                f"{self.run_dir} is in use by another trainer ({self._holder()}); wait until it finishes "
                "or stop it (kill -TERM <pid> saves a checkpoint), or choose another run.run_name"
            ) from None
        except BaseException:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(UTC).isoformat(timespec="seconds")}
        f.write(json.dumps(holder) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self, *, discard_empty: bool = False) -> None:
        """Drop the lock (closing the file drops it); a second call does nothing. ``discard_empty`` also
        removes the run folder when :meth:`acquire` created it and it still holds nothing but the lock file
        (a run that failed before it wrote anything leaves no empty folder behind)."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            if discard_empty and self.created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
                self.path.unlink()
                self.run_dir.rmdir()
        except OSError:
            pass  # leaving the folder is harmless
        finally:
            f.close()

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']}, since {info.get('since', '?')}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"holder unknown: {self.path} has no readable pid/host yet"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
