"""The routing trace: which expert(s) each layer chose for each token, and with what gate.

A forward that is handed a :class:`RoutingTrace` (``GPT.forward(..., routing_trace=trace)``, or
``GPT.decode(..., routing_trace=trace)`` while generating) gets every bank layer's decisions recorded in it,
as tensors on the model's device: nothing is copied to the host until a reader asks. Without a trace the
forward records nothing and costs nothing extra. Readers: per-domain routing at validation (sb-train's
``domains.csv``, docs/log-format.md §5) and the serving API's per-token routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerChoices:
    """One layer's decisions for a (B, T) batch of tokens, ``k`` choices per token."""

    experts: Tensor  # (B, T, k) int64 expert index of each choice
    gates: Tensor  # (B, T, k) float32 gate that scaled the expert's output (0 when not served)
    served: Tensor  # (B, T, k) bool: the choice names a live expert and fit in its capacity


@dataclass
class RoutingTrace:
    """Per-layer :class:`LayerChoices`, in the order the layers ran. Decoding appends along T: each
    :meth:`record` for a layer already present is concatenated after the positions recorded before."""

    layers: dict[int, LayerChoices] = field(default_factory=dict)

    def record(self, layer_idx: int, experts: Tensor, gates: Tensor, served: Tensor) -> None:
        """Store layer ``layer_idx``'s choices (each (B, T, k)); detached, gates as float32."""
        new = LayerChoices(experts.detach(), gates.detach().float(), served.detach())
        old = self.layers.get(layer_idx)
        if old is not None:
            new = LayerChoices(
                torch.cat([old.experts, new.experts], dim=1),
                torch.cat([old.gates, new.gates], dim=1),
                torch.cat([old.served, new.served], dim=1),
            )
        self.layers[layer_idx] = new

    def layer_indices(self) -> list[int]:
        return sorted(self.layers)

    def expert_counts(self, num_experts: int, mask: Tensor | None = None) -> Tensor:
        """(L_traced, E) int64: per traced layer (in :meth:`layer_indices` order), how many served choices
        went to each expert, counting only tokens where ``mask`` (B, T) bool is True (all when None)."""
        rows = []
        for layer in self.layer_indices():
            ch = self.layers[layer]
            keep = ch.served if mask is None else ch.served & mask.to(ch.served.device)[..., None]
            counts = torch.zeros(num_experts, dtype=torch.long, device=ch.experts.device)
            counts.index_add_(0, ch.experts[keep], torch.ones_like(ch.experts[keep]))
            rows.append(counts)
        if not rows:
            return torch.zeros(0, num_experts, dtype=torch.long)
        return torch.stack(rows)
