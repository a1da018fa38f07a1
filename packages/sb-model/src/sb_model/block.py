"""One SwitchBank layer: residual mix, attention (unless skipped), then the shared bank on the normed input.

(docs/design/model.md, block.) For the baselines the bank is a per-layer MoE (the same module, this layer
routed to its own experts) or a dense per-layer FFN replaces it (docs/design/model.md, per-layer MoE
baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sb_model.attention import CausalSelfAttention
from sb_model.bank.bank import SharedExpertBank
from sb_model.bank.router import RoutingContext
from sb_model.functional import init_linear_, relu_squared, rms_norm

if TYPE_CHECKING:
    from sb_model.generation import LayerCache


class DenseFFN(nn.Module):
    """A per-layer ReLU² MLP (W2 · relu(W1 · x)²), zero-initialised output, as one bank expert."""

    def __init__(self, dim: int, hidden: int, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(hidden, dim, dtype=dtype, device=device))
        self.w2 = nn.Parameter(torch.zeros(dim, hidden, dtype=dtype, device=device))
        init_linear_(self.w1)

    def forward(self, x: Tensor) -> Tensor:
        return relu_squared(x @ self.w1.type_as(x).t()) @ self.w2.type_as(x).t()


class Block(nn.Module):
    """Layer ``layer_idx``. Its scalars (residual lambdas, value lambdas) live in the GPT's ``scalars`` vector
    and are passed in; its router's temperature and load-balance boosts reach the bank through the routing
    schedule."""

    def __init__(
        self,
        layer_idx: int,
        attn: CausalSelfAttention | None,
        *,
        long_window: bool,
        dense_ffn: DenseFFN | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = attn
        self.long_window = long_window
        self.dense_ffn = dense_ffn

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer_idx}, attention={'long' if self.long_window else 'short'}"
            f"{'' if self.attn is not None else ' (skipped)'}"
        )

    def forward(
        self,
        x: Tensor,
        x0: Tensor,
        ve: Tensor | None,
        lambdas: Tensor,
        sa_lambdas: Tensor,
        masks,
        rotary,
        bank: SharedExpertBank | None,
        ctx: RoutingContext | None,
        cache: LayerCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns the new residual and the layer's aux loss (0-d). ``cache`` only when decoding."""
        x = lambdas[0] * x + lambdas[1] * x0
        if self.attn is not None:
            mask = masks.long if self.long_window else masks.short
            x = x + self.attn(x, ve, sa_lambdas, rotary, mask, None if cache is None else cache.kv)
        h = rms_norm(x)
        if self.dense_ffn is not None:
            return x + self.dense_ffn(h), torch.zeros((), device=x.device, dtype=torch.float32)
        assert bank is not None and ctx is not None, "a bank layer needs the bank and its routing context"
        if cache is not None and cache.features is not None:
            cache.features.prime(bank, self.layer_idx, h, ctx)
        y, aux = bank(h, self.layer_idx, ctx)
        return x + y, aux
