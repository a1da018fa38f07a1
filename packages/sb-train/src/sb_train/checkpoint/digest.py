"""Checkpoint checksums: sha256 of each file hashed while it is written, checked before it is read.

A save hands :class:`HashingWriter` to ``torch.save`` instead of the open file: every byte torch writes goes
through ``write()``, which feeds it to sha256 on its way to the file, so the digest describes exactly the
bytes that were written, without reading the file back. meta.json records ``{"size": n, "sha256": hex}`` per
file, plus ``meta_sha256``, a digest of meta.json's own content (canonical JSON without that key), so a
changed value in meta.json (a step, a size) is caught as well.

Before a file is loaded, the loader (:mod:`sb_train.checkpoint.store`) hashes it again with
:func:`file_sha256` (1 MiB chunks, no copy of the file in memory) and refuses it, naming the file, when the
digest differs. docs/design/training.md (checkpoints and resume).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from sb_runlog import config_hash

__all__ = ["HashingWriter", "file_sha256", "meta_digest"]

CHUNK_BYTES = 1 << 20


class HashingWriter:
    """A write-only binary stream that feeds sha256 with every byte it passes on to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._sha = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.bytes_written += view.nbytes
        written = self._target.write(view)
        return view.nbytes if written is None else written

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    @property
    def hexdigest(self) -> str:
        """The sha256 of everything written so far."""
        return self._sha.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (read in chunks)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


def meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 (hex) of meta.json's content without its ``meta_sha256`` key, hashed as the run-log format
    hashes a config (compact JSON, sorted keys)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return config_hash(body).removeprefix("sha256:")
