"""Rotary position embeddings with the reference's "half-truncated" frequency layout.

(docs/design/model.md, rotary.) For a head of size D the D/2 rotation pairs (x[i], x[i + D/2]) get the
frequencies ``(1/base_period)^(j/(D/4 - 1))`` for j < D/4 followed by D/4 zeros: a quarter of the head
dimensions carry position, the other pairs pass through unrotated. Positions are absolute in the packed
sequence (not reset at document starts). Tables are float32 and the rotation is computed in float32, then cast
back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rotary_frequencies(head_dim: int, base_period: float = 1024.0) -> Tensor:
    """(head_dim // 2,) float32 angular frequencies: head_dim // 4 log-spaced values from 1 down to
    1/base_period, then head_dim // 4 zeros."""
    if head_dim < 4 or head_dim % 4:
        raise ValueError(f"rotary needs head_dim to be a positive multiple of 4 (got {head_dim})")
    n = head_dim // 4
    exponents = torch.linspace(0.0, 1.0, steps=n, dtype=torch.float32) if n > 1 else torch.zeros(1)
    live = (1.0 / base_period) ** exponents
    return torch.cat([live, torch.zeros(n, dtype=torch.float32)])


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., T, H, D) with tables cos/sin (T, D/2): y1 = x1·cos + x2·sin, y2 = -x1·sin + x2·cos."""
    c = cos[:, None, :]
    s = sin[:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    y = torch.cat([x1 * c + x2 * s, x2 * c - x1 * s], dim=-1)
    return y.type_as(x)


class Rotary(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_seq_len-1 (non-persistent buffers)."""

    def __init__(self, head_dim: int, max_seq_len: int, base_period: float = 1024.0, device=None) -> None:
        super().__init__()
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1 (got {max_seq_len})")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        freqs = rotary_frequencies(head_dim, base_period).to(device)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32, device=device), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (B, T, H, D) at absolute positions offset..offset+T-1."""
        T = x.shape[-3]
        if offset + T > self.max_seq_len:
            raise ValueError(
                f"positions up to {offset + T - 1} exceed the rotary table (max_seq_len={self.max_seq_len}); "
                "build the model with a larger GPTConfig.max_seq_len"
            )
        return apply_rotary(x, self.cos[offset : offset + T], self.sin[offset : offset + T])
