"""Training checkpoints in one place: layout and lookups (:mod:`.layout`), save and load (:mod:`.store`).

The trainer saves and resumes through :class:`CheckpointManager`; ``--resume`` and ``sb-train sample`` find a
checkpoint with :func:`find_checkpoint` / :func:`find_latest_of_preset` and read its weights with
:func:`load_shared_state` (``torch.load(weights_only=True)``).
"""

from sb_train.checkpoint.layout import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    CheckpointInfo,
    find_checkpoint,
    find_latest_of_preset,
    list_checkpoints,
    rank_file_name,
    read_checkpoint_info,
    step_dir_name,
)
from sb_train.checkpoint.store import CheckpointManager, load_shared_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "find_checkpoint",
    "find_latest_of_preset",
    "list_checkpoints",
    "load_shared_state",
    "rank_file_name",
    "read_checkpoint_info",
    "step_dir_name",
]
