"""The validation stream: the first ``num_tokens`` tokens of the validation shards, split across ranks.

The batches are read once, kept in host memory (only this rank's share), and replayed on every pass,
so each validation sees exactly the same tokens on every run and never touches the disk again. When the
shards carry domain labels (:mod:`sb_data.domains`), :meth:`ValidationLoader.domain_labels` gives the label
of every token of every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sb_data.domains import DomainTable
from sb_data.loader import DistributedTokenLoader, Mode, default_rank_world
from sb_data.shards import Cursor, ShardFiles


@dataclass(frozen=True)
class BatchDomains:
    """The domain label of every input token of a :class:`ValidationLoader`'s batches."""

    names: tuple[str, ...]
    """The label names; a label is an index into them."""
    labels: list[np.ndarray]
    """Per batch, int16 labels of the inputs (same length); -1 = a document without a label."""


class ValidationLoader:
    """Iterable over ``len(self)`` fixed ``(inputs, targets)`` batches; every iteration yields the same ones.

    ``num_tokens`` must be a multiple of ``world_size * tokens_per_rank`` and must fit in the shards
    (validation never wraps around). Other arguments are as for :class:`DistributedTokenLoader`.
    """

    def __init__(
        self,
        files: ShardFiles,
        num_tokens: int,
        tokens_per_rank: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        mode: Mode = "contiguous",
        max_seq_len: int | None = None,
        device: str | torch.device = "cpu",
        vocab_size: int | None = None,
        eot_id: int | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        rank, world_size = default_rank_world(rank, world_size)
        global_batch = world_size * tokens_per_rank
        if num_tokens < global_batch or num_tokens % global_batch:
            raise ValueError(
                f"num_tokens={num_tokens:,} must be a positive multiple of world_size × tokens_per_rank "
                f"= {world_size} × {tokens_per_rank:,} = {global_batch:,}"
            )
        self.num_tokens = num_tokens
        self.steps = num_tokens // global_batch
        self._loader = DistributedTokenLoader(
            files,
            tokens_per_rank,
            rank=rank,
            world_size=world_size,
            mode=mode,
            max_seq_len=max_seq_len,
            device=device,
            vocab_size=vocab_size,
            eot_id=eot_id,
            prefetch=False,
            pin_memory=pin_memory,
        )
        available = self._loader.shards.total_tokens
        if mode == "contiguous" and num_tokens + 1 > available:
            raise ValueError(
                f"validation asks for {num_tokens:,} tokens (+1 for the last target) but the validation "
                f"shards hold {available:,}; lower num_tokens"
            )
        self._batches: list[tuple[np.ndarray, np.ndarray]] | None = None
        shards = self._loader.shards
        self._domains = DomainTable(shards.paths, shards.sizes.tolist(), shards.eot_id)
        self._labels: list[np.ndarray] = []

    def domain_labels(self) -> BatchDomains | None:
        """Each batch's per-token domain labels, or None when no validation shard has a side file."""
        if not self._domains.labelled:
            return None
        if self._batches is None:
            self._batches = self._read_all()
        return BatchDomains(self._domains.names, self._labels)

    def _read_all(self) -> list[tuple[np.ndarray, np.ndarray]]:
        batches = []
        shards = self._loader.shards
        for _ in range(self.steps):
            if self._domains.labelled:
                inputs, targets, sources = self._loader.next_host_batch_with_sources()
                labels = [self._domains.lookup(f, shards.get(f).tokens, pos) for f, pos in sources]
                self._labels.append(np.concatenate(labels))
            else:
                inputs, targets = self._loader.next_host_batch()
            batches.append((inputs.copy(), targets.copy()))
        if tuple(self._loader.state_dict()[k] for k in ("epoch", "shard", "position")) > Cursor(1, 0, 0):
            raise ValueError(
                f"validation asks for {self.num_tokens:,} tokens but the validation shards run out before "
                f"that in {self._loader.mode} mode; lower num_tokens or add validation data"
            )
        self._loader.close()
        return batches

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._batches is None:
            self._batches = self._read_all()
        for inputs, targets in self._batches:
            yield self._loader.to_device(inputs, targets)
