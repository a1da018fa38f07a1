"""Router input features that do not depend on a layer: the per-token flags (spec 2.8.3) and the document
starts the EMA features need. The GPT builds these once per forward from the token ids."""

from __future__ import annotations

import torch
from torch import Tensor


def _as_batch(tokens: Tensor) -> Tensor:
    if tokens.dim() == 1:
        return tokens[None]
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (T,) or (B, T), got {tuple(tokens.shape)}")
    return tokens


def document_starts(tokens: Tensor, eod_token_id: int = 50256) -> Tensor:
    """(B, T) bool: True at position 0 and right *after* every end-of-document token (the flags' and the
    reverse EMA's convention; attention counts the EOD token itself as the first token of the next
    document)."""
    tok = _as_batch(tokens)
    is_eod = tok == eod_token_id
    starts = torch.zeros_like(is_eod)
    starts[:, 0] = True
    starts[:, 1:] = is_eod[:, :-1]
    return starts


def build_router_flags(
    tokens: Tensor,
    *,
    eod_token_id: int = 50256,
    first_doc_tokens: int = 64,
    block_pos_bins: int = 8,
    block_size: int = 128,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-token flag features, (B, T, 3 + block_pos_bins), all causal (each depends on tokens <= t):

    0. is_eod: the token is the end-of-document token;
    1. is_after_eod: a document starts here (position 0, or the previous token was EOD);
    2. is_first_docN: fewer than ``first_doc_tokens`` tokens since the document start;
    3.. one-hot bin of the position inside the ``block_size``-token attention block of the packed sequence.
    """
    if block_pos_bins not in (4, 8, 16):
        raise ValueError(f"block_pos_bins must be 4, 8 or 16 (got {block_pos_bins})")
    tok = _as_batch(tokens)
    B, T = tok.shape
    starts = document_starts(tok, eod_token_id)
    pos = torch.arange(T, device=tok.device).expand(B, T)
    last_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=1).values
    first_n = (pos - last_start) < first_doc_tokens
    bins = torch.clamp(((pos % block_size) * block_pos_bins) // block_size, max=block_pos_bins - 1)
    one_hot = torch.nn.functional.one_hot(bins, block_pos_bins).to(dtype)
    head = torch.stack([tok == eod_token_id, starts, first_n], dim=-1).to(dtype)
    return torch.cat([head, one_hot], dim=-1)


def starts_from_flags(flags: Tensor) -> Tensor:
    """The document-start mask stored in column 1 of the flag features."""
    return flags[..., 1] > 0.5
