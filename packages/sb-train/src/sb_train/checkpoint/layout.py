"""Where checkpoints live and how to find them: the on-disk layout, its verification, and the lookups.

Layout under a run's checkpoint root (``<run dir>/checkpoints``; every rank must see the same filesystem)::

    <root>/step_000400/
        shared.pt          rank 0: the state every rank shares (model, replicated optimizer state,
                           schedule/AutoClip/logit-stat states, data-loader position, config, step)
        rank_00000.pt      each rank r writes rank_{r:05d}.pt: its own state (RNG states, optimizer
        rank_00001.pt      state that is not replicated)
        meta.json          written LAST by rank 0: {"format": "sb-train-checkpoint", "version": 2, "step",
                           "world_size", "val_loss" (or null), "created_at",
                           "files": {name: {"size": bytes, "sha256": hex}}, "meta_sha256": hex}

A directory without a valid meta.json, with a file missing or of the wrong size, or any hidden ``.tmp``/
``.old`` directory is never taken as a checkpoint, so a run killed in the middle of a save resumes from the
previous one. The file digests are computed while the files are written and checked when a file is loaded
(:mod:`sb_train.checkpoint.digest`); ``meta_sha256`` covers meta.json itself and is checked here. Version 1
checkpoints (older sb-train: sizes only, no digests) are still read, with a warning that they cannot be
verified (docs/design/training.md, checkpoints and resume). Writing and reading the files is
:mod:`sb_train.checkpoint.store`'s job.

Finding: :func:`find_checkpoint` turns a run directory, a checkpoint root or a checkpoint directory into one
complete checkpoint (``--resume PATH``, ``sb-train sample RUN_OR_CHECKPOINT``); :func:`find_latest_of_preset`
is ``--resume auto``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sb_train.checkpoint.digest import meta_digest

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "best_checkpoint",
    "find_checkpoint",
    "find_latest_of_preset",
    "list_checkpoints",
    "rank_file_name",
    "read_checkpoint_info",
    "step_dir_name",
]

CHECKPOINT_FORMAT = "sb-train-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no checksums (read with a warning)
META_FILE = "meta.json"
SHARED_FILE = "shared.pt"
CHECKPOINTS_DIR = "checkpoints"  # a run directory's checkpoint root

STEP_DIR = re.compile(r"^step_(\d{6,})$")
STALE_DIR = re.compile(r"^\.step_\d{6,}\.(tmp|old)-[0-9a-f]+$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or read; the message says why and what to do."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What meta.json says about one complete checkpoint directory."""

    path: Path
    step: int
    world_size: int
    val_loss: float | None
    created_at: str
    files: dict[str, int]  # name -> size in bytes
    sha256: dict[str, str] = field(default_factory=dict)  # name -> hex digest; empty for version 1
    version: int = CHECKPOINT_VERSION

    @property
    def checksummed(self) -> bool:
        """Whether meta.json records a digest of every file (version 2 and later)."""
        return bool(self.files) and self.files.keys() <= self.sha256.keys()

    @property
    def size_bytes(self) -> int:
        """Total size of the checkpoint's files (meta.json excluded)."""
        return sum(self.files.values())


def step_dir_name(step: int) -> str:
    """The final directory name of a step's checkpoint: ``step_000400``."""
    return f"step_{step:06d}"


def rank_file_name(rank: int) -> str:
    """The per-rank file name of rank `rank`: ``rank_00003.pt``."""
    return f"rank_{rank:05d}.pt"


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and verify a checkpoint directory; raise `CheckpointError` unless it is complete.

    Complete means: meta.json parses, has this format and version, names the step of the directory and a
    file list with shared.pt and one file per rank, and every listed file exists with the listed size.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if STALE_DIR.match(path.name):
        raise CheckpointError(
            f"{path} is the temporary directory of an interrupted save (or of a replaced checkpoint), "
            "not a checkpoint; resume from a step_NNNNNN directory"
        )
    if not meta_path.is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint: it has no {META_FILE} (the save that wrote it was "
            "interrupted); resume from another checkpoint, e.g. with --resume auto"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path} is corrupt (not readable JSON: {err}); delete {path}") from err
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta_path} is not an sb-train checkpoint description (no format field)")
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{meta_path} has checkpoint version {version!r}; this sb-train reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer sb-train wrote it? upgrade)"
        )
    if version >= 2 and meta.get("meta_sha256") != meta_digest(meta):
        raise CheckpointError(
            f"{meta_path} is corrupt: its content does not match its meta_sha256 (changed after the save); "
            "resume from another checkpoint (e.g. an older step_* folder) and delete this one"
        )
    try:
        step, world_size = int(meta["step"]), int(meta["world_size"])
        files, sha256 = _file_entries(meta["files"], version)
        val_loss = None if meta.get("val_loss") is None else float(meta["val_loss"])
        created_at = str(meta.get("created_at", ""))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{meta_path} is corrupt (bad/missing field {err!r}); delete {path}") from err
    expected = {SHARED_FILE, *(rank_file_name(r) for r in range(world_size))}
    if world_size < 1 or not expected <= files.keys():
        raise CheckpointError(f"{meta_path} is corrupt: its file list does not match world_size={world_size}")
    match = STEP_DIR.match(path.name)
    if match and int(match.group(1)) != step:
        raise CheckpointError(f"{meta_path} is corrupt: it names step {step}, the directory is {path.name}")
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {actual} bytes, meta.json recorded {size}"
            )
    return CheckpointInfo(path, step, world_size, val_loss, created_at, files, sha256, version)


def _file_entries(entries: dict, version: int) -> tuple[dict[str, int], dict[str, str]]:
    """(sizes, digests) from meta.json's ``files``: ``{name: size}`` in version 1,
    ``{name: {"size", "sha256"}}`` from version 2 on."""
    if version == 1:
        return {str(name): int(size) for name, size in entries.items()}, {}
    sizes, digests = {}, {}
    for name, entry in entries.items():
        sizes[str(name)] = int(entry["size"])
        digest = entry["sha256"]
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError(f"files[{name!r}].sha256 = {digest!r} is not a sha256 hex digest")
        digests[str(name)] = digest
    return sizes, digests


def list_checkpoints(root: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """The complete checkpoints directly under `root`, sorted by step (incomplete ones are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not STEP_DIR.match(child.name) or not child.is_dir():
            continue
        try:
            found.append(read_checkpoint_info(child))
        except CheckpointError:
            continue
    return sorted(found, key=lambda info: info.step)


def best_checkpoint(infos: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint with the lowest finite validation loss (the newest on ties), or None."""
    scored = [i for i in infos if i.val_loss is not None and math.isfinite(i.val_loss)]
    return min(scored, key=lambda i: (i.val_loss, -i.step)) if scored else None


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The complete checkpoint that ``path`` names: a checkpoint directory (it must be complete), a
    checkpoint root or a run directory (their newest complete checkpoint). Raises `CheckpointError` when
    there is none."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a checkpoint: give a run folder, its checkpoints folder or one "
            "checkpoint folder (checkpoints/step_NNNNNN)"
        )
    if (path / META_FILE).exists() or STEP_DIR.match(path.name):
        return read_checkpoint_info(path).path
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    infos = list_checkpoints(root)
    if not infos:
        raise CheckpointError(f"{root} holds no complete checkpoint (step_*/meta.json)")
    return infos[-1].path


def find_latest_of_preset(out_dir: str | os.PathLike[str], preset: str, run_name: str = "") -> Path | None:
    """``--resume auto``: the most recently written complete checkpoint of a run of ``preset`` under
    ``out_dir`` (only the run ``run_name`` when given), or None when there is none (a fresh start)."""
    out = Path(out_dir)
    runs = [out / run_name] if run_name else sorted(out.glob("*/"))
    best: tuple[float, Path] | None = None
    for run_dir in runs:
        infos = list_checkpoints(run_dir / CHECKPOINTS_DIR)
        if not infos or not _same_preset(run_dir, preset):
            continue
        latest = infos[-1].path
        mtime = latest.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, latest)
    return None if best is None else best[1]


def _same_preset(run_dir: Path, preset: str) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text())["preset"] == preset
    except (OSError, ValueError, KeyError):
        return True  # a run directory without a header (killed before logging): judge by its checkpoints
