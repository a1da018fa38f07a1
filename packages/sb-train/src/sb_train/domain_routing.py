"""Per-domain routing at validation: the rows of domains.csv and each layer's domain specialisation (NMI).

When the validation shards carry domain labels (sb-data's side files, docs/design/data.md), the first
``data.domain_val_tokens`` validation tokens are run, at every validation, through the *uncompiled* model in
evaluation mode with a :class:`sb_model.RoutingTrace`. Each rank counts its served assignments per (domain,
layer, expert) on the device, one all-reduce sums them over ranks, and one host copy turns the small
(domains × layers × experts) table into rows (docs/log-format.md §5). The bank's router-metric buffers are put
back afterwards, so router.csv is the same with or without this measurement. Dense models skip it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from sb_runlog import domain_expert_nmi

from sb_data import DomainLabelError
from sb_data.domains import side_file_path
from sb_data.shards import find_shards
from sb_model import GPT
from sb_train.config import ConfigError
from sb_train.data_setup import validation_loader

if TYPE_CHECKING:
    from sb_train.setup import TrainParts

__all__ = ["DomainRouting", "domain_rows"]

NO_LABELS = (
    "[sb-train] domains.csv: the validation shards carry no domain labels (no *.domains.json side files), "
    "so per-domain routing is not measured; label documents with a JSON Lines \"domain\" field in "
    "`sb-data prepare` (a python-docs folder built before labels existed: delete it to rebuild it)"
)


class DomainRouting:
    """The labelled validation batches of this rank and the measurement over them (see the module docstring).

    Build it with :meth:`from_parts`; :meth:`measure` returns the domains.csv rows of one validation."""

    def __init__(self, names: tuple[str, ...], batches: list[tuple[torch.Tensor, torch.Tensor]],
                 num_experts: int, distributed: bool) -> None:
        self.names = names
        self.batches = batches  # (inputs (T,) int32, labels (T,) int64; -1 = no label), on the device
        self.num_experts = num_experts
        self.distributed = distributed

    @classmethod
    def from_parts(cls, parts: TrainParts) -> DomainRouting | None:
        """The measurement for a run, or None: a dense model, ``data.domain_val_tokens = 0``, or validation
        shards without labels (rank 0 says so once)."""
        cfg, env = parts.cfg, parts.env
        data = cfg.data
        if parts.model.bank is None or data.domain_val_tokens == 0:
            return None
        if not any(side_file_path(shard).exists() for shard in find_shards(data.val_files)):
            if env.is_main:
                print(NO_LABELS, file=sys.stderr)
            return None
        steps = max(1, data.domain_val_tokens // (env.world_size * data.val_seq_len))
        try:
            loader = validation_loader(data, env, steps, cfg.model.vocab_size)
            labels = loader.domain_labels()
        except DomainLabelError:
            raise
        except ValueError as exc:
            raise ConfigError(f"data.domain_val_tokens = {data.domain_val_tokens:,}: {exc}") from None
        if labels is None:
            if env.is_main:
                print(NO_LABELS, file=sys.stderr)
            return None
        batches = [
            (inputs, torch.from_numpy(lab.astype("int64")).to(env.device))
            for (inputs, _), lab in zip(loader, labels.labels, strict=True)
        ]
        return cls(labels.names, batches, cfg.model.experts_per_layer, env.distributed)

    @torch.no_grad()
    def measure(self, model: GPT, step: int,
                autocast: Callable[[], contextlib.AbstractContextManager]) -> list[dict[str, Any]]:
        """domains.csv rows of ``step`` (collective: every rank calls it). ``model`` is the uncompiled
        model, already in evaluation mode with the step's evaluation schedule."""
        bank = model.bank
        assert bank is not None
        saved = [b.clone() for b in bank.metrics.buffers()]
        counts: torch.Tensor | None = None  # (domains, layers, experts)
        layers: list[int] = []
        for inputs, labels in self.batches:
            with autocast():
                trace = model.trace_routing(inputs[None])
            layers = trace.layer_indices()
            per_domain = torch.stack([
                trace.expert_counts(self.num_experts, (labels == d)[None]) for d in range(len(self.names))
            ])
            counts = per_domain if counts is None else counts + per_domain
        for buf, old in zip(bank.metrics.buffers(), saved, strict=True):
            buf.copy_(old)
        assert counts is not None
        if self.distributed:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return domain_rows(step, self.names, layers, counts.tolist())


def domain_rows(step: int, names: tuple[str, ...], layers: list[int],
                counts: list[list[list[int]]]) -> list[dict[str, Any]]:
    """domains.csv rows from ``counts[domain][layer position][expert]``, each with its layer's NMI."""
    rows = []
    for li, layer in enumerate(layers):
        nmi = domain_expert_nmi([counts[d][li] for d in range(len(names))])
        for d, name in enumerate(names):
            for expert, tokens in enumerate(counts[d][li]):
                rows.append({"step": step, "layer": layer, "domain": name, "expert": expert, "tokens": tokens,
                             "nmi": nmi})
    return rows
