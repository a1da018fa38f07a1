"""Checks of ``prepare``'s output folder and shard prefix, made before any input is read or file written.

A prefix is one plain name: it may not contain a path separator, ``.``/``..``, glob characters or a leading
dot, so every file ``prepare`` writes, and every file ``--overwrite`` deletes, lies directly inside the
output folder and matches only that prefix's shard names.
"""

from __future__ import annotations

import re
from pathlib import Path

from sb_data.atomic import temporary_sibling

# letters, digits and "_" first; then also "." "+" "-". \w is Unicode-aware, so non-ASCII names work.
_PREFIX = re.compile(r"\w[\w.+-]*")
MAX_PREFIX_CHARS = 200  # + "_train_000000.bin" and the temporary name's suffix stay under 255 bytes


class PrepareOptionError(ValueError):
    """An argument of ``prepare`` is refused before anything is written; the message names it and the fix."""


def check_prefix(prefix: str) -> None:
    """Refuse a prefix that would put files outside the output folder or match other shards."""
    if not isinstance(prefix, str) or not prefix:
        raise PrepareOptionError("--prefix must not be empty; pass a plain name such as 'data'")
    if len(prefix) > MAX_PREFIX_CHARS or len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_CHARS:
        raise PrepareOptionError(
            f"--prefix is {len(prefix)} characters long; keep it under {MAX_PREFIX_CHARS}"
        )
    if not _PREFIX.fullmatch(prefix):
        raise PrepareOptionError(
            f"--prefix {prefix!r} is not a plain name: it may hold letters, digits, '_', '.', '+' and '-' "
            "(starting with a letter, digit or '_'), and no path separator, so that every shard lands inside "
            "the output folder; to write elsewhere, change -o instead"
        )


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that is a file, or that lies under one (``-o notes.txt/shards``)."""
    for folder in (out, *out.parents):
        if folder.exists():
            if folder.is_dir():
                return
            where = "is a file" if folder == out else f"lies under {folder}, which is a file"
            raise PrepareOptionError(
                f"output folder {out} {where}, not a folder; choose another -o (a folder that exists or "
                "can be created)"
            )


def probe_writable(out: Path) -> None:
    """Create and remove one hidden file in ``out``, so a read-only or forbidden folder fails now,
    before any input is tokenized, with the folder's name in the error."""
    probe = temporary_sibling(out / "write-check")
    try:
        open(probe, "xb").close()
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or "cannot write", str(out)) from exc
    probe.unlink(missing_ok=True)
