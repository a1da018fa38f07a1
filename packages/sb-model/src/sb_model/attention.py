"""Causal self-attention of one SwitchBank layer (docs/design/model.md, attention).

q, k, v come from one fused weight ``qkvo_w`` of shape (4, H·D, d) (slices q, k, v, out; the optimizer can
treat it as a stack of four matrices). q and k are RMS-normed per head and rotated, v is RMS-normed and mixed
with the layer's value embedding by two per-layer lambdas, attention uses a fixed scale (0.12 in the record,
not 1/sqrt(D)), and the output projection starts at zero, so every layer starts as the identity.

Masks: a FlexAttention ``BlockMask`` runs FlexAttention (the fast path, compiled), a boolean tensor runs
``scaled_dot_product_attention`` with that explicit mask (see :mod:`sb_model.attention_masks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb_model.attention_masks import flex_attention
from sb_model.functional import init_linear_, rms_norm
from sb_model.rotary import Rotary


class KVCache:
    """Keys and values of one attention layer for generation: (B, H, max_len, D) each, filled left
    to right."""

    def __init__(self, batch: int, num_heads: int, head_dim: int, max_len: int, *, dtype, device) -> None:
        self.k = torch.zeros(batch, num_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, H, n, D) new keys/values; return all keys/values so far."""
        n = k.shape[2]
        end = self.length + n
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        head_dim: int,
        *,
        scale: float = 0.12,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"model_dim ({dim}) must be a multiple of head_dim ({head_dim})")
        self.dim = dim
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = scale
        self.qkvo_w = nn.Parameter(torch.empty(4, dim, dim, dtype=dtype, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_linear_(self.qkvo_w, self.dim)
        self.qkvo_w[3].zero_()

    def forward(
        self,
        x: Tensor,
        ve: Tensor | None,
        lambdas: Tensor,
        rotary: Rotary,
        mask,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x (B, T, d); ve (B, T, d) or None; lambdas (2,) = (λ_v, λ_ve); mask: a BlockMask
        (FlexAttention) or a
        bool tensor (B, 1, T, T_keys) (SDPA). With a cache, x holds the new positions only."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        w = self.qkvo_w.type_as(x)
        qkv = F.linear(x, w[:3].flatten(0, 1)).view(B, T, 3 * H, D)
        q, k, v = qkv.split(H, dim=2)
        offset = 0 if cache is None else cache.length
        q = rotary(rms_norm(q), offset)
        k = rotary(rms_norm(k), offset)
        v = lambdas[0] * rms_norm(v)
        if ve is not None:
            v = v + lambdas[1] * ve.view(B, T, H, D)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append(k, v)
        if isinstance(mask, Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            if flex_attention is None:
                raise RuntimeError("FlexAttention is not available in this torch build; use attention='sdpa'")
            y = flex_attention(q, k, v, block_mask=mask, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return F.linear(y, w[3])
