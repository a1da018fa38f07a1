"""Saving and loading checkpoints: atomic multi-rank saves, pruning, and ``weights_only`` loads.

The directory layout, its verification and the lookups are in :mod:`sb_train.checkpoint.layout`.

Atomicity: a save writes everything into ``<root>/.step_000400.tmp-<nonce>/`` (rank 0 draws the nonce and
broadcasts it), each file through a temporary name, fsync and ``os.replace``. When every rank reports its
file written, rank 0 writes meta.json and renames the directory to ``step_000400`` (an existing directory
of the same step is first renamed aside and deleted once the new one is in place).

Errors are collective: a rank whose write fails reports it to the others (all-gather), every rank raises
`CheckpointError` and the half-written directory is removed, so no rank waits forever in a barrier.

After each save rank 0 prunes: it keeps the newest ``keep_last`` checkpoints plus the one with the lowest
finite validation loss, and deletes stale ``.tmp``/``.old`` directories left by interrupted saves.

Checksums: each file is written through :class:`~sb_train.checkpoint.digest.HashingWriter`, so its sha256
is computed from the bytes as they are written; meta.json records it, and every load hashes the file again
and refuses a mismatch, naming the file. A version-1 checkpoint (no digests) loads with a warning.

Serialization: both kinds of file are read with ``torch.load(weights_only=True)``, which cannot execute
code from the file. `save` therefore checks its input first and refuses (naming the key) any value that
such a load could not rebuild: allowed are dicts, lists, tuples, sets, None, bool, int, float, complex,
str, bytes, tensors, torch.Size/dtype/device/layout, and classes registered with
``torch.serialization.add_safe_globals``. Convert the rest (a dataclass config: ``dataclasses.asdict``; a
NumPy scalar: ``float(x)``; a NumPy array: ``torch.from_numpy``). `sb_train.rng_state` stores RNG states
in this form. The check is :mod:`sb_train.checkpoint.plain_values`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from sb_data.atomic import atomic_write, fsync_directory
from sb_train.checkpoint.digest import HashingWriter, file_sha256, meta_digest
from sb_train.checkpoint.layout import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    META_FILE,
    SHARED_FILE,
    STALE_DIR,
    CheckpointError,
    CheckpointInfo,
    best_checkpoint,
    find_checkpoint,
    list_checkpoints,
    rank_file_name,
    read_checkpoint_info,
    step_dir_name,
)
from sb_train.checkpoint.plain_values import check_weights_only

__all__ = ["CheckpointManager", "load_shared_state"]


def load_shared_state(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict:
    """The shared dict of a complete checkpoint directory (any world size): model weights, configuration,
    schedule values. For sampling, warm starts and inspection, not for an exact resume."""
    info = read_checkpoint_info(path)
    for name in info.files:  # every file, not only shared.pt: a damaged checkpoint is refused as a whole
        if name != SHARED_FILE:
            _verify(info, name)
    return _load_file(info, SHARED_FILE, map_location)


class CheckpointManager:
    """Saves and finds the checkpoints of one run under `root` (see the module docstring).

    `rank`/`world_size` default to torch.distributed's when it is initialised, else 0/1. `keep_last`
    is how many of the newest checkpoints pruning keeps (None: keep all); `keep_best` also keeps the
    checkpoint with the lowest finite validation loss.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_last: int | None = 3,
        keep_best: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        distributed = _dist_initialized()
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        self.world_size = world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")

    # ----------------------------------------------------------------------------------------- find

    def list(self) -> list[CheckpointInfo]:
        """The complete checkpoints under the root, sorted by step."""
        return list_checkpoints(self.root)

    def latest(self) -> Path | None:
        """The complete checkpoint with the highest step, or None."""
        infos = self.list()
        return infos[-1].path if infos else None

    def best(self) -> Path | None:
        """The complete checkpoint with the lowest finite validation loss (newest on ties), or None."""
        best = best_checkpoint(self.list())
        return best.path if best else None

    def resolve(self, spec: str) -> Path | None:
        """The checkpoint a ``--resume`` value names: ``"auto"`` is the newest complete checkpoint under the
        root (None when there is none: a fresh start); anything else is a path for :func:`find_checkpoint`."""
        if spec == "auto":
            return self.latest()
        return find_checkpoint(spec)

    # ----------------------------------------------------------------------------------------- load

    def load(self, path: str | os.PathLike[str], *, map_location: Any = "cpu") -> tuple[dict, dict]:
        """Read a checkpoint: (shared dict, this rank's per-rank dict).

        Raises `CheckpointError` when the checkpoint is incomplete or corrupt, or was written by a
        different number of ranks (per-rank state cannot be mapped onto another world size).
        """
        info = read_checkpoint_info(path)
        if info.world_size != self.world_size:
            raise CheckpointError(
                f"checkpoint {info.path} was written by {info.world_size} rank(s) but this run has "
                f"{self.world_size}: per-rank state (each rank's RNG streams, per-rank optimizer state) "
                "cannot be mapped onto a different number of ranks, so an exact resume is impossible. "
                f"Resume with {info.world_size} process(es) (torchrun --nproc_per_node={info.world_size}), "
                "or start a new run from the model weights only (CheckpointManager.load_shared)."
            )
        shared = _load_file(info, SHARED_FILE, map_location)
        per_rank = _load_file(info, rank_file_name(self.rank), map_location)
        return shared, per_rank

    def load_shared(self, path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict:
        """Only the shared dict (any world size): for warm starts and inspection, not for exact resume."""
        return load_shared_state(path, map_location=map_location)

    # ----------------------------------------------------------------------------------------- save

    def save(self, step: int, shared: dict, per_rank: dict, *, val_loss: float | None = None) -> Path:
        """Write the checkpoint of `step` atomically; a collective that every rank calls.

        `shared` is written by rank 0 only (the other ranks may pass the same dict or an empty one);
        `per_rank` is written by every rank. Returns the final directory. On failure on any rank, every
        rank raises `CheckpointError` and the previous checkpoints are untouched.
        """
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        distributed = self._check_collective()
        final = self.root / step_dir_name(step)
        nonce = _broadcast(uuid.uuid4().hex[:12] if self.rank == 0 else None, distributed)
        tmp = self.root / f".{step_dir_name(step)}.tmp-{nonce}"

        report: dict[str, Any] = {"rank": self.rank, "files": {}, "error": None}
        local_error: Exception | None = None
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            targets = [(rank_file_name(self.rank), per_rank, "per_rank")]
            if self.rank == 0:
                targets.insert(0, (SHARED_FILE, shared, "shared"))
            for name, obj, label in targets:
                check_weights_only(obj, label)
                report["files"][name] = _save_hashed(tmp / name, obj)
        except Exception as err:
            local_error = err
            report["error"] = f"rank {self.rank}: {type(err).__name__}: {err}"
        reports = _all_gather(report, self.world_size, distributed)

        errors = [r["error"] for r in reports if r["error"]]
        outcome: str | None = None
        if self.rank == 0:
            if errors:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                try:
                    files = {name: size for r in reports for name, size in r["files"].items()}
                    self._publish(tmp, final, step, files, val_loss, nonce)
                except Exception as err:
                    local_error = err
                    outcome = f"rank 0: {type(err).__name__}: {err}"
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    self._prune()
        outcome = _broadcast(outcome, distributed)
        if errors or outcome:
            message = "; ".join([*errors, *([outcome] if outcome else [])])
            raise CheckpointError(
                f"saving the checkpoint of step {step} under {self.root} failed: {message}"
            ) from local_error
        return final

    def _check_collective(self) -> bool:
        distributed = _dist_initialized()
        if self.world_size > 1 and not distributed:
            raise CheckpointError(
                f"world_size={self.world_size} needs torch.distributed to be initialised before save()"
            )
        if distributed and (dist.get_world_size(), dist.get_rank()) != (self.world_size, self.rank):
            raise CheckpointError(
                f"CheckpointManager has rank {self.rank} of {self.world_size} but torch.distributed has rank "
                f"{dist.get_rank()} of {dist.get_world_size()}; leave rank/world_size unset to use the latter"
            )
        return distributed

    def _publish(
        self, tmp: Path, final: Path, step: int, files: dict[str, dict[str, Any]], val_loss: float | None,
        nonce: str,
    ) -> None:
        """Rank 0: write meta.json last, then move the directory into place."""
        later = [info.step for info in self.list() if info.step > step]
        if later:
            warnings.warn(
                f"saving step {step} under {self.root}, which already holds later checkpoints (steps "
                f"{later}) from an earlier run; --resume auto will pick the latest step",
                RuntimeWarning,
                stacklevel=3,
            )
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "world_size": self.world_size,
            "val_loss": float(val_loss) if val_loss is not None and math.isfinite(val_loss) else None,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": dict(sorted(files.items())),
        }
        meta["meta_sha256"] = meta_digest(meta)
        text = json.dumps(meta, indent=2) + "\n"
        _write_atomic(tmp / META_FILE, lambda f: f.write(text.encode()))
        fsync_directory(tmp)
        aside = None
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{nonce}")
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except Exception:
            if aside is not None:  # put the earlier checkpoint of this step back
                os.replace(aside, final)
            raise
        fsync_directory(self.root)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def _prune(self) -> None:
        """Rank 0: keep the newest `keep_last` and the best; delete stale .tmp/.old directories.

        A failure here only warns: the new checkpoint is in place, and the next save prunes again.
        """
        try:
            self._prune_unsafe()
        except OSError as err:
            message = f"pruning old checkpoints under {self.root} failed: {err}"
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _prune_unsafe(self) -> None:
        infos = self.list()
        if not infos:
            return
        keep = {info.path for info in (infos if self.keep_last is None else infos[-self.keep_last :])}
        best = best_checkpoint(infos) if self.keep_best else None
        if best is not None:
            keep.add(best.path)
        for info in infos:
            if info.path not in keep:
                shutil.rmtree(info.path, ignore_errors=True)
        newest = max((info.path / META_FILE).stat().st_mtime for info in infos if info.path in keep)
        for child in self.root.iterdir():
            if STALE_DIR.match(child.name) and child.is_dir() and child.stat().st_mtime <= newest:
                shutil.rmtree(child, ignore_errors=True)


# --------------------------------------------------------------------------------------------- helpers


def _dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _broadcast(value: Any, distributed: bool) -> Any:
    if not distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(value: Any, world_size: int, distributed: bool) -> list[Any]:
    if not distributed:
        return [value]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> int:
    """Write through a hidden temporary sibling + fsync + os.replace (sb-data's atomic_write); return the
    final size in bytes."""
    with atomic_write(path) as f:
        write(f)
    return path.stat().st_size


def _save_hashed(path: Path, obj: dict) -> dict[str, Any]:
    """torch.save ``obj`` atomically to ``path`` through a hashing stream: ``{"size", "sha256"}`` of the
    bytes written (the digest is not a re-read of the file)."""
    with atomic_write(path) as f:
        stream = HashingWriter(f)
        torch.save(obj, stream)
    size = path.stat().st_size
    if size != stream.bytes_written:  # the digest must describe the whole file
        raise CheckpointError(f"{path}: {size} bytes on disk, {stream.bytes_written} went through the hash")
    return {"size": size, "sha256": stream.hexdigest}


def _verify(info: CheckpointInfo, name: str) -> None:
    """Refuse a file whose sha256 is not the one meta.json recorded (warn once per file of a version-1
    checkpoint, which records none)."""
    path = info.path / name
    if not info.checksummed:
        warnings.warn(
            f"checkpoint {info.path} (version {info.version}, written by an older sb-train) records no "
            f"checksums, so {name} cannot be verified; it is read anyway (weights only, no code runs). "
            "The next checkpoint this run saves has checksums",
            RuntimeWarning,
            stacklevel=4,
        )
    elif (actual := file_sha256(path)) != info.sha256[name]:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt: its sha256 is {actual[:16]}..., meta.json recorded "
            f"{info.sha256[name][:16]}... (the bytes changed after the save); resume from another checkpoint "
            "(e.g. an older step_* folder) and delete this one"
        )


def _load_file(info: CheckpointInfo, name: str, map_location: Any) -> dict:
    """Verify one file of a checkpoint against meta.json's sha256, then ``torch.load(weights_only=True)``."""
    path = info.path / name
    _verify(info, name)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain values, which a "
            "checkpoint written by sb-train never does (torch.load(weights_only=True) stopped at: "
            f"{str(err).splitlines()[0]}); it was made or altered by something else, do not trust it"
        ) from err
    except Exception as err:
        raise CheckpointError(f"cannot read {path}, it is corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not the dict a checkpoint file holds")
    return obj
