"""A set of shards seen as an endless stream: epoch order, background loading, and cursor arithmetic.

Positions in the stream are ``Cursor(epoch, shard, pos)``: ``shard`` indexes the epoch's shard order and
``pos`` is a token offset (contiguous mode) or a document index (document-aligned mode) inside that
shard. Moving a token cursor forward uses only the token counts from the headers, never the data, so
any position is reached in time independent of how far into the stream it lies.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sb_data.domains import SIDE_SUFFIX
from sb_data.format import ShardHeader, read_header, read_tokens
from sb_data.sources import GLOB_CHARS

DEFAULT_EOT = 50256  # GPT-2's <|endoftext|>, the separator in speedrun shards that record no metadata

ShardFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def find_shards(files: ShardFiles) -> list[Path]:
    """Resolve a glob pattern, a folder (its ``*.bin``), a file, or a list of these, to shard paths.

    Patterns and folders are sorted; a list keeps its order. A pattern skips domain side files
    (``*.domains.json``, :mod:`sb_data.domains`).
    """
    items = [files] if isinstance(files, str | os.PathLike) else list(files)
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.bin"))
        elif path.is_file():
            found = [path]
        elif GLOB_CHARS & set(str(item)):
            found = [
                Path(p)
                for p in sorted(glob.glob(str(item), recursive=True))
                if Path(p).is_file() and not p.endswith(SIDE_SUFFIX)  # a shard's domain labels, not a shard
            ]
        else:
            found = []
        if not found and path.is_dir():
            raise FileNotFoundError(
                f"the folder {str(item)!r} holds no *.bin shard files; name the shard files, or a folder "
                "that holds them (write shards with `sb-data prepare`, fetch them with `sb-data download`)"
            )
        if not found:
            raise FileNotFoundError(
                f"no shard files match {str(item)!r} (relative paths start at {Path.cwd()}); "
                "write shards with `sb-data prepare` or fetch them with `sb-data download`"
            )
        paths.extend(found)
    return paths


class Cursor(NamedTuple):
    epoch: int
    shard: int
    pos: int


@dataclass
class LoadedShard:
    file_index: int
    tokens: np.ndarray
    doc_starts: np.ndarray | None = None
    """Positions of the end-of-text tokens that open documents (document-aligned mode only)."""
    doc_caps: np.ndarray | None = None
    """Inputs each document can supply: up to the next document, or to the shard's last token."""


@dataclass
class LoaderStats:
    shard_loads: int = 0
    """Shards read from disk so far."""
    blocking_waits: int = 0
    """Times a step needed a shard that was not in memory yet (the prefetch was late or absent)."""
    wait_seconds: float = 0.0
    """Time spent in those waits."""


def document_index(tokens: np.ndarray, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Document starts (end-of-text positions) and how many inputs each can supply with a real target.

    A document runs to the next end-of-text token; the last one in a shard runs to the shard's
    second-to-last token, so its targets stay inside the shard. Documents that can supply nothing are
    dropped.
    """
    starts = np.flatnonzero(tokens == eot_id).astype(np.int64)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    if starts.size:
        ends[-1] = tokens.size - 1
    caps = ends - starts
    keep = caps > 0
    return starts[keep], caps[keep]


class ShardSet:
    """The shards of one split, their epoch order, and a cache filled in the background."""

    def __init__(
        self,
        files: ShardFiles,
        *,
        vocab_size: int | None = None,
        eot_id: int | None = None,
        index_documents: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: bool = True,
    ) -> None:
        self.paths = find_shards(files)
        self.headers: list[ShardHeader] = [read_header(p) for p in self.paths]
        self.sizes = np.array([h.num_tokens for h in self.headers], dtype=np.int64)
        self.total_tokens = int(self.sizes.sum())
        if self.total_tokens == 0:
            raise ValueError(f"every shard is empty: {', '.join(map(str, self.paths))}")
        self.vocab_size = vocab_size
        self.eot_id = self._resolve_eot(eot_id)
        self.index_documents = index_documents
        self.shuffle = shuffle
        self.seed = seed
        self.stats = LoaderStats()
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._slots: dict[int, Future[LoadedShard]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sb-data-prefetch") if prefetch else None

    def _resolve_eot(self, eot_id: int | None) -> int:
        if eot_id is not None:
            return eot_id
        recorded = {h.eot_id for h in self.headers if h.eot_id is not None}
        if len(recorded) > 1:
            raise ValueError(
                f"the shards record different end-of-text ids {sorted(recorded)}; they were written with "
                "different tokenizers, so pass eot_id explicitly or keep them apart"
            )
        return recorded.pop() if recorded else DEFAULT_EOT

    @property
    def num_shards(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> list[list]:
        """Names and token counts: enough to tell whether a saved position belongs to these shards."""
        return [[p.name, int(n)] for p, n in zip(self.paths, self.sizes, strict=True)]

    def order(self, epoch: int) -> np.ndarray:
        """The shard order of ``epoch``: sorted, or a permutation that depends only on (seed, epoch)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_shards)
        else:
            order = np.arange(self.num_shards)
        self._order_cache = (epoch, order)
        return order

    def file_at(self, epoch: int, shard: int) -> int:
        return int(self.order(epoch)[shard])

    def next_shard(self, epoch: int, shard: int) -> tuple[int, int]:
        shard += 1
        return (epoch + 1, 0) if shard == self.num_shards else (epoch, shard)

    def advance_tokens(self, cursor: Cursor, n: int) -> Cursor:
        """The token cursor ``n`` tokens after ``cursor`` (uses header counts only)."""
        epoch, shard, pos = cursor
        pos += n
        while True:
            size = int(self.sizes[self.file_at(epoch, shard)])
            if pos < size:
                return Cursor(epoch, shard, pos)
            pos -= size
            epoch, shard = self.next_shard(epoch, shard)
            if shard == 0 and pos >= self.total_tokens:
                epoch += pos // self.total_tokens
                pos %= self.total_tokens

    # -- loading -------------------------------------------------------------------------------------

    def _load(self, file_index: int) -> LoadedShard:
        path = self.paths[file_index]
        tokens = read_tokens(path, vocab_size=self.vocab_size, header=self.headers[file_index])
        shard = LoadedShard(file_index, tokens)
        if self.index_documents:
            shard.doc_starts, shard.doc_caps = document_index(tokens, self.eot_id)
        with self._lock:
            self.stats.shard_loads += 1
        return shard

    def prefetch(self, file_index: int) -> None:
        """Start reading ``file_index`` in the background (no-op if cached or prefetch is off)."""
        if self._pool is None:
            return
        with self._lock:
            if file_index not in self._slots:
                self._slots[file_index] = self._pool.submit(self._load, file_index)

    def get(self, file_index: int) -> LoadedShard:
        """The loaded shard, waiting for its background read or reading it now."""
        with self._lock:
            slot = self._slots.get(file_index)
        if slot is None or not slot.done():
            t0 = time.perf_counter()
            if slot is None:
                slot = Future()
                try:
                    slot.set_result(self._load(file_index))
                except BaseException as exc:
                    slot.set_exception(exc)
                with self._lock:
                    self._slots[file_index] = slot
            shard = slot.result()
            with self._lock:
                self.stats.blocking_waits += 1
                self.stats.wait_seconds += time.perf_counter() - t0
            return shard
        return slot.result()

    def retain(self, keep: set[int]) -> None:
        """Drop every cached shard not in ``keep`` (the memory of a shard is freed with its last view)."""
        with self._lock:
            for file_index in list(self._slots):
                if file_index not in keep:
                    self._slots.pop(file_index).cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._slots.clear()
