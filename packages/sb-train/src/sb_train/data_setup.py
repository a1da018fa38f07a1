"""Finding (or building) the token shards and opening the training and validation streams."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from sb_data import DistributedTokenLoader, ValidationLoader
from sb_data.prepare import summary_name
from sb_train.builtin_corpus import PYTHON_DOCS_INPUT, write_python_docs_shards
from sb_train.config import DataConfig
from sb_train.distributed import DistEnv, barrier


def shard_files(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))


def ensure_shards(data: DataConfig, env: DistEnv) -> None:
    """Make sure the train and validation shards exist. With ``auto_prepare = "python-docs"``, rank 0 writes
    them from the Python installation's documentation when they are missing (and says so); otherwise a
    missing shard set is an error that says how to get the data."""
    missing = [p for p in (data.train_files, data.val_files) if not shard_files(p)]
    if not missing:
        return
    if data.auto_prepare != "python-docs":
        raise FileNotFoundError(
            f"no shards match {missing[0]!r} (relative to {Path.cwd()}). Get FineWeb with "
            "`uv run sb-data download fineweb10B` (add --help for options), tokenize your own text with "
            "`uv run sb-data prepare`, or point data.train_files / data.val_files at your shards "
            "(--set data.train_files=...)."
        )
    train_dir = Path(data.train_files).parent
    val_dir = Path(data.val_files).parent
    prefix = Path(data.train_files).name.split("_train_")[0]
    if train_dir != val_dir or "_train_" not in Path(data.train_files).name or (
        Path(data.val_files).name.split("_val_")[0] != prefix
    ):
        raise ValueError(
            "data.auto_prepare needs train_files and val_files in one folder named like "
            f"<dir>/<prefix>_train_*.bin and <dir>/<prefix>_val_*.bin (got {data.train_files!r}, "
            f"{data.val_files!r})"
        )
    half_built = len(missing) == 1  # one of the two shard sets is there: an interrupted or damaged build
    if half_built and not _auto_prepared(train_dir, prefix):
        present = data.val_files if missing[0] == data.train_files else data.train_files
        raise FileNotFoundError(
            f"no shards match {missing[0]!r}, but {present!r} has shards that data.auto_prepare did not "
            f"write ({train_dir}/{summary_name(prefix)} names other inputs), so they are not replaced: point "
            "data.train_files / data.val_files at a complete set, or delete those shards to let sb-train "
            "build the python-docs corpus there"
        )
    if env.is_main:
        what = (f"{missing[0]!r} is missing although the other split is there (an interrupted build): "
                "rebuilding both" if half_built else f"no shards at {data.train_files!r}: building them")
        print(f"[sb-train] {what} from the Python documentation that ships with this interpreter (byte "
              f"tokens, up to {data.auto_prepare_max_bytes:,} bytes) into {train_dir}/ ...",
              file=sys.stderr, flush=True)
        write_python_docs_shards(train_dir, prefix, max_bytes=data.auto_prepare_max_bytes,
                                 overwrite=half_built)
    barrier()
    still = [p for p in (data.train_files, data.val_files) if not shard_files(p)]
    if still:
        raise FileNotFoundError(f"after preparing the data, no shards match {still[0]!r}")


def _auto_prepared(folder: Path, prefix: str) -> bool:
    """Whether the ``prefix`` shards in ``folder`` may be rebuilt: their summary (which sb-data writes last)
    is missing, i.e. the build was cut short, or it names only the python-docs corpus as input."""
    try:
        summary = json.loads((folder / summary_name(prefix)).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    inputs = summary.get("inputs") if isinstance(summary, dict) else None
    return bool(inputs) and all(str(i).endswith(PYTHON_DOCS_INPUT) for i in inputs)


def train_loader(
    data: DataConfig, env: DistEnv, micro_tokens: int, vocab_size: int, *, pin_memory: bool | None = None
) -> DistributedTokenLoader:
    """The training stream; ``pin_memory`` (the device plan's) stages batches in pinned memory, which also
    makes their copies non-blocking (None: sb-data's default for the device)."""
    return DistributedTokenLoader(
        data.train_files,
        micro_tokens,
        rank=env.rank,
        world_size=env.world_size,
        mode=data.loader_mode,
        device=env.device,
        vocab_size=vocab_size,
        pin_memory=pin_memory,
    )


def validation_loader(
    data: DataConfig, env: DistEnv, steps: int, vocab_size: int, *, pin_memory: bool | None = None
) -> ValidationLoader:
    """``steps`` forwards of ``val_seq_len`` tokens per rank, always the first tokens of the val shards."""
    return ValidationLoader(
        data.val_files,
        steps * env.world_size * data.val_seq_len,
        data.val_seq_len,
        rank=env.rank,
        world_size=env.world_size,
        device=env.device,
        vocab_size=vocab_size,
        pin_memory=pin_memory,
    )
