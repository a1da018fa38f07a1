"""The distributed token loader: disjoint per-rank batches, two batching modes, exact O(1) resume.

Every rank runs the same arithmetic on the same global cursor and keeps its own slice, so ranks never
need to talk to each other and their data never overlap. The cursor is the whole state: saving it and
loading it continues the stream at the same batch without replaying the batches before it.

Modes
-----
``contiguous``
    Step ``s`` reads the global window of ``world_size * tokens_per_rank`` tokens at the cursor; rank
    ``r`` gets the ``r``-th piece as inputs and the token after each input as its target. Windows run
    across shard ends and across epochs, so no token is ever dropped.
``aligned``
    Every sequence starts at a document's end-of-text token, as in the speedrun's BOS-aligned loader.
    Ranks take whole documents in turn, each rank filling ``tokens_per_rank`` inputs; a document longer
    than ``max_seq_len`` (or than the room left) is cut and its rest is skipped. Targets are always the
    true next tokens of the document (also at a cut), and documents never run across a shard end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from sb_data.documents import DocumentWindow, segment_positions
from sb_data.shards import Cursor, LoadedShard, LoaderStats, ShardFiles, ShardSet
from sb_data.transfer import transfer_and_widen

Mode = Literal["contiguous", "aligned"]
STATE_FORMAT = "sb-data-loader/1"


def default_pin_memory(device: torch.device) -> bool:
    """Whether batches for ``device`` are staged in pinned memory (and so copied non-blocking) by default:
    on CUDA."""
    return device.type == "cuda"


def default_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill missing rank/world size from an initialised torch.distributed group, else 0/1."""
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_rank() if initialised else 0
        if world_size is None:
            world_size = torch.distributed.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class DistributedTokenLoader:
    """Endless ``(inputs, targets)`` batches for one rank, with exact, constant-time resume.

    Args:
        files: a glob pattern, a folder of ``.bin`` shards, a file, or a list of them.
        tokens_per_rank: inputs per rank per step (targets have the same length).
        rank, world_size: default to torch.distributed's when a group is initialised, else 0 and 1.
        mode: ``"contiguous"`` or ``"aligned"`` (see the module docstring).
        max_seq_len: aligned mode: the longest piece of one document in a batch (None: no limit).
        device: where batches go. On CUDA they are staged in pinned memory and copied non-blocking.
        vocab_size: every shard is checked to hold only ids below it (and below the vocabulary its
            header records), when it is loaded.
        eot_id: document separator for aligned mode (default: the id the shards record, else 50256).
        shuffle_shards, seed: visit the shards of each epoch in an order drawn from (seed, epoch).
        prefetch: read the next shard in a background thread while the current one is in use.
        pin_memory: stage batches in pinned memory (default: when the device is CUDA).

    Inputs are int32 and targets int64, both 1-D of length ``tokens_per_rank``.
    """

    def __init__(
        self,
        files: ShardFiles,
        tokens_per_rank: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        mode: Mode = "contiguous",
        max_seq_len: int | None = None,
        device: str | torch.device = "cpu",
        vocab_size: int | None = None,
        eot_id: int | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        prefetch: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        if mode not in ("contiguous", "aligned"):
            raise ValueError(f"mode must be 'contiguous' or 'aligned', got {mode!r}")
        if tokens_per_rank < 1:
            raise ValueError(f"tokens_per_rank must be >= 1, got {tokens_per_rank}")
        if max_seq_len is not None and max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1 or None, got {max_seq_len}")
        if max_seq_len is not None and mode != "aligned":
            raise ValueError("max_seq_len applies to mode='aligned' only")
        self.rank, self.world_size = default_rank_world(rank, world_size)
        self.tokens_per_rank = tokens_per_rank
        self.mode: Mode = mode
        self.max_seq_len = max_seq_len
        self.device = torch.device(device)
        self.pin_memory = default_pin_memory(self.device) if pin_memory is None else pin_memory
        self.shards = ShardSet(
            files,
            vocab_size=vocab_size,
            eot_id=eot_id,
            index_documents=mode == "aligned",
            shuffle=shuffle_shards,
            seed=seed,
            prefetch=prefetch,
        )
        self.dtype = self.shards.headers[0].dtype
        if any(h.dtype != self.dtype for h in self.shards.headers):
            raise ValueError("the shards mix header versions (uint16 and uint32 tokens); convert them to one")
        self._cursor = Cursor(0, 0, 0)
        self.step = 0
        self._docs_hint = 0
        self._cache_key: tuple | None = None
        self._sources: list[tuple[int, np.ndarray]] | None = None  # filled by next_host_batch_with_sources
        self.shards.prefetch(self.shards.file_at(0, 0))

    def set_batch_shape(self, tokens_per_rank: int | None = None, max_seq_len: int | None = None) -> None:
        """Change the batch from the next step on (batch-size or sequence-length schedules).

        The stream continues from the current position, so a run that re-applies the same schedule
        after ``load_state_dict`` gets the same batches as the uninterrupted run.
        """
        if tokens_per_rank is not None:
            if tokens_per_rank < 1:
                raise ValueError(f"tokens_per_rank must be >= 1, got {tokens_per_rank}")
            self.tokens_per_rank = tokens_per_rank
        if max_seq_len is not None:
            if self.mode != "aligned":
                raise ValueError("max_seq_len applies to mode='aligned' only")
            if max_seq_len < 1:
                raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
            self.max_seq_len = max_seq_len

    # -- public state --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Completed passes over the data: the epoch of the next batch's first token/document."""
        return self._cursor.epoch

    @property
    def stats(self) -> LoaderStats:
        return self.shards.stats

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch (plain Python values; the same on every rank)."""
        return {
            "format": STATE_FORMAT,
            "mode": self.mode,
            "epoch": self._cursor.epoch,
            "shard": self._cursor.shard,
            "position": self._cursor.pos,
            "step": self.step,
            "shuffle_shards": self.shards.shuffle,
            "seed": self.shards.seed,
            "files": self.shards.fingerprint(),
            "tokens_per_rank": self.tokens_per_rank,
            "world_size": self.world_size,
            "max_seq_len": self.max_seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position: the next batch is the one that followed the save.

        Constant time: only the cursor is restored, and the shard it points into starts loading in the
        background. The batch size, world size and max_seq_len may differ from the saved run's (the
        data then continues from the same position), but the shards, mode and shuffling must match.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a loader state of this sb-data (format {state.get('format')!r})")
        if state["mode"] != self.mode:
            raise ValueError(f"the state is for mode={state['mode']!r}, this loader uses mode={self.mode!r}")
        saved = [list(x) for x in state["files"]]
        mine = self.shards.fingerprint()
        if saved != mine:
            detail = next(
                (f"saved {a} vs now {b}" for a, b in zip(saved, mine, strict=False) if a != b),
                f"{len(saved)} shards saved vs {len(mine)} now",
            )
            raise ValueError(f"the state belongs to other shards ({detail}); load it with the same files")
        if (state["shuffle_shards"], state["seed"]) != (self.shards.shuffle, self.shards.seed):
            raise ValueError(
                f"the state was saved with shuffle_shards={state['shuffle_shards']}, seed={state['seed']}; "
                f"this loader has shuffle_shards={self.shards.shuffle}, seed={self.shards.seed}"
            )
        epoch, shard, pos = int(state["epoch"]), int(state["shard"]), int(state["position"])
        bad = epoch < 0 or not 0 <= shard < self.shards.num_shards or pos < 0
        if not bad and self.mode == "contiguous":
            bad = pos > 0 and pos >= self.shards.sizes[self.shards.file_at(epoch, shard)]
        if bad:
            raise ValueError(f"corrupt loader state: epoch={epoch}, shard={shard}, position={pos}")
        self._cursor = Cursor(epoch, shard, pos)
        self.step = int(state["step"])
        self._cache_key = None
        self.shards.retain(set())
        self.shards.prefetch(self.shards.file_at(epoch, shard))

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.next_host_batch()
        return self.to_device(inputs, targets)

    def next_host_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's next batch as raw token arrays on the host (advances the loader)."""
        if self.mode == "contiguous":
            inputs, targets, used = self._contiguous_batch()
        else:
            inputs, targets, used = self._aligned_batch()
        self.step += 1
        # Keep the shards this step used plus the cursor's shard and the one after it; start reading
        # those two in the background. Skipped while a step stays inside the shard it started in.
        key = (self._cursor.epoch, self._cursor.shard, frozenset(used))
        if key != self._cache_key:
            self._cache_key = key
            following = self.shards.file_at(*self.shards.next_shard(self._cursor.epoch, self._cursor.shard))
            current = self.shards.file_at(self._cursor.epoch, self._cursor.shard)
            self.shards.retain(used | {current, following})
            self.shards.prefetch(current)
            self.shards.prefetch(following)
        return inputs, targets

    def next_host_batch_with_sources(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
        """:meth:`next_host_batch` plus where each input came from: ``(file index, token positions)`` pieces,
        in input order (used to look up per-token domain labels, :mod:`sb_data.domains`)."""
        self._sources = []
        try:
            inputs, targets = self.next_host_batch()
            pieces, self._sources = self._sources, None
        finally:
            self._sources = None
        out, left = [], inputs.size  # contiguous mode read one more token than it returns as inputs
        for file_index, positions in pieces:
            if left > 0:
                out.append((file_index, positions[:left]))
                left -= min(left, positions.size)
        return inputs, targets, out

    def _read(self, cursor: Cursor, n: int, used: set[int]) -> np.ndarray:
        """``n`` consecutive stream tokens from ``cursor`` (a view when they lie in one shard)."""
        parts = []
        epoch, shard, pos = cursor
        while n > 0:
            file_index = self.shards.file_at(epoch, shard)
            tokens = self.shards.get(file_index).tokens
            used.add(file_index)
            take = min(n, tokens.size - pos)
            if take > 0:
                parts.append(tokens[pos : pos + take])
                n -= take
                if self._sources is not None:
                    self._sources.append((file_index, np.arange(pos, pos + take, dtype=np.int64)))
            epoch, shard = self.shards.next_shard(epoch, shard)
            pos = 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _contiguous_batch(self) -> tuple[np.ndarray, np.ndarray, set[int]]:
        T = self.tokens_per_rank
        used: set[int] = set()
        start = self.shards.advance_tokens(self._cursor, self.rank * T)
        window = self._read(start, T + 1, used)
        self._cursor = self.shards.advance_tokens(self._cursor, self.world_size * T)
        return window[:-1], window[1:], used

    def _aligned_batch(self) -> tuple[np.ndarray, np.ndarray, set[int]]:
        T, world = self.tokens_per_rank, self.world_size
        docs = DocumentWindow(self.shards, self._cursor, self.max_seq_len)
        # How many documents to look at first: what the last step used, plus slack. (Only speed depends
        # on this guess; the batch is the same whatever it is.)
        docs.gather(self._docs_hint + world + 8)
        while True:
            lengths = np.concatenate(docs.lengths)
            cum = np.zeros(lengths.size + 1, dtype=np.int64)
            np.cumsum(lengths, out=cum[1:])
            first = 0
            mine: tuple[int, int, int] | None = None
            for r in range(world):
                target = int(cum[first]) + T
                end = int(np.searchsorted(cum, target, side="left"))
                if end > lengths.size:
                    break
                if r == self.rank:
                    mine = (first, end, target - int(cum[end - 1]))
                first = end
            else:
                break
            docs.gather(max(docs.count, 16))
        assert mine is not None
        begin, end, last_len = mine
        files = np.concatenate(docs.files)[begin:end]
        starts = np.concatenate(docs.starts)[begin:end]
        seg = lengths[begin:end].copy()
        seg[-1] = last_len
        inputs = np.empty(T, dtype=self.dtype)
        targets = np.empty(T, dtype=self.dtype)
        used: set[int] = set()
        out = 0
        # Documents come in runs of the same shard; gather each run with one fancy index.
        cuts = np.flatnonzero(np.diff(files)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, files.size], strict=True):
            file_index = int(files[lo])
            used.add(file_index)
            tokens = self.shards.get(file_index).tokens
            pos = segment_positions(starts[lo:hi], seg[lo:hi])
            np.take(tokens, pos, out=inputs[out : out + pos.size])
            if self._sources is not None:
                self._sources.append((file_index, pos.copy()))
            pos += 1
            np.take(tokens, pos, out=targets[out : out + pos.size])
            out += pos.size
        self._cursor = docs.cursor_of(first)
        self._docs_hint = first + first // 8
        used.add(self.shards.file_at(self._cursor.epoch, self._cursor.shard))
        return inputs, targets, used

    # -- device transfer -----------------------------------------------------------------------------

    def to_device(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Host token arrays -> (int32 inputs, int64 targets) on the loader's device."""
        if self.device.type == "cpu":
            return torch.from_numpy(inputs.astype(np.int32)), torch.from_numpy(targets.astype(np.int64))
        return transfer_and_widen(inputs, targets, self.device, pin_memory=self.pin_memory)

    def close(self) -> None:
        """Stop the background reader and free the cached shards."""
        self.shards.close()

    def __enter__(self) -> DistributedTokenLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "DistributedTokenLoader",
    "LoadedShard",
    "Mode",
    "default_pin_memory",
    "default_rank_world",
    "segment_positions",
    "transfer_and_widen",
]
