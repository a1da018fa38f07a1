"""Aligned mode's document bookkeeping: which documents a batch may take, and where their tokens are.

:class:`DocumentWindow` gathers candidate documents from a cursor onward, shard by shard;
:func:`segment_positions` turns the kept (start, length) pieces into token positions.
"""

from __future__ import annotations

import numpy as np

from sb_data.shards import Cursor, ShardSet


def segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), without a Python loop.

    One cumulative sum of steps: +1 inside a segment, a jump from one segment's end to the next start.
    """
    total = int(lengths.sum())
    steps = np.ones(total, dtype=np.int64)
    if total == 0:
        return steps
    firsts = np.cumsum(lengths[:-1])
    steps[0] = starts[0]
    steps[firsts] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
    return np.cumsum(steps, out=steps)


class DocumentWindow:
    """Candidate documents from a cursor onward, gathered shard by shard on demand."""

    def __init__(self, shards: ShardSet, cursor: Cursor, max_seq_len: int | None) -> None:
        self.shards = shards
        self.max_seq_len = max_seq_len
        self._next = cursor  # where the next gather continues
        self._empty_run = 0
        self.cursors: list[Cursor] = []  # per gathered piece: (epoch, shard, first doc)
        self.files: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.count = 0
        self.piece_offsets = [0]

    def gather(self, want_docs: int) -> None:
        """Add at least ``want_docs`` more documents (crossing shards and epochs as needed)."""
        added = 0
        while added < want_docs:
            epoch, shard, doc = self._next
            loaded = self.shards.get(self.shards.file_at(epoch, shard))
            n_docs = loaded.doc_starts.size
            take = min(n_docs - doc, want_docs - added) if doc < n_docs else 0
            if take > 0:
                caps = loaded.doc_caps[doc : doc + take]
                if self.max_seq_len is not None:
                    caps = np.minimum(caps, self.max_seq_len)
                self.cursors.append(Cursor(epoch, shard, doc))
                self.files.append(np.full(take, loaded.file_index, dtype=np.int64))
                self.starts.append(loaded.doc_starts[doc : doc + take])
                self.lengths.append(caps)
                self.count += take
                self.piece_offsets.append(self.count)
                added += take
                self._empty_run = 0
            if doc + take >= n_docs:
                if take == 0:
                    self._empty_run += 1
                    if self._empty_run > self.shards.num_shards:
                        raise ValueError(
                            f"aligned mode found no document start (token id {self.shards.eot_id}) in any "
                            f"shard ({', '.join(map(str, self.shards.paths))}); use mode='contiguous' or "
                            "pass the right eot_id"
                        )
                epoch, shard = self.shards.next_shard(epoch, shard)
                self._next = Cursor(epoch, shard, 0)
            else:
                self._next = Cursor(epoch, shard, doc + take)

    def cursor_of(self, doc: int) -> Cursor:
        """The cursor of the ``doc``-th gathered document (or of the first one not gathered yet)."""
        if doc >= self.count:
            return self._next
        piece = int(np.searchsorted(self.piece_offsets, doc, side="right")) - 1
        epoch, shard, first = self.cursors[piece]
        return Cursor(epoch, shard, first + doc - self.piece_offsets[piece])
