"""What a checkpoint holds and how it goes back: the loop's progress and the state of every trained part.

:func:`capture_state` collects everything the next step depends on (model, optimizer, loader position, RNG
streams, clip and logit-statistics state, each rank's unreduced router metrics) plus the loop's
:class:`Progress`; :func:`restore_state` puts the parts back (also after the untimed warm-up);
:func:`resume_from` reads a checkpoint through :mod:`sb_train.checkpoint` and returns the progress to
continue from. A resumed run repeats the uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sb_train.config_changes import check_resume_config
from sb_train.rng_state import capture_rng_state, restore_rng_state
from sb_train.setup import TrainParts

__all__ = ["Progress", "capture_state", "restore_state", "resume_from"]


@dataclass
class Progress:
    """How far the loop got: saved with every checkpoint."""

    step_done: int = -1  # the last optimizer step whose update is in the model
    time_ms: float = 0.0  # timed training time so far
    best_val: tuple[float, int] | None = None  # (loss, step) of the lowest validation loss
    val_history: list[tuple[int, float]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=dict)  # the last training step's schedule values


def capture_state(parts: TrainParts, progress: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared, per-rank) dicts of a checkpoint (only plain values: they load with ``weights_only=True``)."""
    bank = parts.model.bank
    shared = {
        "step": progress.step_done,
        "time_ms": progress.time_ms,
        "model": parts.model.state_dict(),
        "optimizer": parts.opt.state_dict(),
        "loader": parts.loader.state_dict(),
        "router_clip": parts.router_clip.state_dict(),
        "logit_stats": parts.logit_stats.state_dict(),
        "best_val": progress.best_val,
        "val_history": progress.val_history,
        "config": parts.cfg.to_dict(),
        "model_config": parts.cfg.model.to_dict(),
        "routing": progress.routing,  # sampling restores these schedule values
        "run_id": parts.run_id,
    }
    per_rank = {  # each rank's own: RNG streams and its not-yet-reduced router statistics
        "rng": capture_rng_state(),
        "router_metrics": ({k: v.clone() for k, v in bank.metrics.named_buffers()}
                           if bank is not None else {}),
    }
    return shared, per_rank


def restore_state(parts: TrainParts, shared: dict[str, Any], per_rank: dict[str, Any]) -> None:
    """Put back everything the next step depends on (the inverse of :func:`capture_state`, without the
    progress). The model's load hook also restores whether the head was untied."""
    parts.model.load_state_dict(shared["model"])
    parts.opt.load_state_dict(shared["optimizer"])
    parts.loader.load_state_dict(shared["loader"])
    parts.router_clip.load_state_dict(shared["router_clip"])
    parts.logit_stats.load_state_dict(shared["logit_stats"])
    bank = parts.model.bank
    if bank is not None:
        for name, buf in bank.metrics.named_buffers():
            buf.copy_(per_rank["router_metrics"][name])
    restore_rng_state(per_rank["rng"])


def resume_from(parts: TrainParts, path: Path, *, allow_config_change: bool = False) -> Progress:
    """Load the checkpoint at ``path`` into the parts. A checkpoint written with another model configuration
    is refused, and one written with other settings too unless ``allow_config_change``
    (:func:`sb_train.config_changes.check_resume_config`)."""
    shared, per_rank = parts.checkpoints.load(path, map_location=parts.device)
    changes = check_resume_config(shared["config"], parts.cfg.to_dict(), str(path),
                                  allow_change=allow_config_change)
    if changes and parts.env.is_main:
        print(f"[sb-train] resuming with {len(changes)} changed setting(s): {', '.join(changes)}",
              file=sys.stderr)
    restore_state(parts, shared, per_rank)
    progress = Progress(step_done=int(shared["step"]), time_ms=float(shared["time_ms"]),
                        best_val=shared["best_val"], val_history=list(shared["val_history"]),
                        routing=dict(shared["routing"]))
    if parts.env.is_main:
        print(f"[sb-train] resumed from {path} (step {progress.step_done}, "
              f"{progress.time_ms / 1000:.1f} s of training so far)", file=sys.stderr)
    return progress
