"""Atomic file creation: write to a temporary file in the target folder, fsync, then rename.

A reader never sees a half-written file under the final name: either the old state (no file) or the
whole new file. A failed write (a full or read-only disk, say) removes its temporary file and reports
the final name; only a killed process can leave a hidden ``.NAME.tmp-*`` file behind, which no shard
pattern such as ``*.bin`` matches.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name in the same folder as ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a binary file that appears at ``path`` only once the ``with`` block completes."""
    final = Path(path)
    tmp = temporary_sibling(final)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        _discard(tmp)
        if exc.errno is None or exc.filename not in (None, os.fspath(tmp)):
            raise
        # Name the file the caller asked for, not the hidden temporary one (which is gone now).
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(final)) from exc
    except BaseException:
        _discard(tmp)
        raise
    fsync_directory(final.parent)


def _discard(tmp: Path) -> None:
    """Remove an unfinished temporary file; a failure here must not hide the error that got us here."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
