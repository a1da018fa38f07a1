"""Document-causal attention masks with block-granular sliding windows (docs/design/model.md, masks).

Token rule. With documents numbered ``docs = cumsum(tokens == eod)`` (the end-of-document token opens the next
document, the reference's attention convention) and blocks of ``block_size`` tokens, query q may
attend key k iff

    k <= q  and  docs[q] == docs[k]  and  q // block_size - k // block_size < max(window_blocks, 1).

This is exactly what the reference's FlexAttention BlockMask computes (its per-query-block
"partial" and "full"
key-block lists, most recent first, clipped to the window), and it depends only on tokens <= q, so
it is causal.

Two representations of the same mask:

* :func:`flex_block_mask` builds a FlexAttention ``BlockMask`` the way the reference does (block
layout once per
  forward, one cheap clip per window size), used on the fast path;
* :func:`dense_attention_mask` writes the token rule out as a boolean (B, 1, Tq, Tk) tensor for
  ``scaled_dot_product_attention`` (small CPU runs, generation with a KV cache).

Window sizes are tensors in both, so a compiled model sees new values, not new constants, when they change.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

try:  # FlexAttention: torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - exercised only on old torch
    BlockMask = None  # type: ignore[assignment,misc]
    flex_attention = None  # type: ignore[assignment]

FLEX_AVAILABLE = flex_attention is not None


def document_ids(tokens: Tensor, eod_token_id: int = 50256) -> Tensor:
    """(B, T) int32 document id per token; the end-of-document token is the first token of the next
    document."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
    return torch.cumsum((tokens == eod_token_id).to(torch.int32), dim=1, dtype=torch.int32)


def long_window_layers(num_layers: int) -> tuple[int, ...]:
    """Layers that use the long window (the reference's rule): every 4th layer from 0 for 28 and 32 layers,
    otherwise ``range(0, L, max(L // 4, 1))``."""
    if num_layers in (28, 32):
        return tuple(range(0, num_layers, 4))
    return tuple(range(0, num_layers, max(num_layers // 4, 1)))


def document_causal_window_mask(
    q_docs: Tensor,
    kv_docs: Tensor,
    q_pos: Tensor,
    kv_pos: Tensor,
    window_blocks: Tensor | int,
    block_size: int = 128,
) -> Tensor:
    """The token rule for arbitrary query/key position sets: (B, 1, Tq, Tk) bool.

    q_docs (B, Tq), kv_docs (B, Tk): document ids; q_pos (Tq,), kv_pos (Tk,): absolute positions."""
    w = torch.as_tensor(window_blocks, device=q_docs.device).clamp(min=1)
    causal = kv_pos[None, :] <= q_pos[:, None]
    near = (q_pos[:, None] // block_size - kv_pos[None, :] // block_size) < w
    same_doc = q_docs[:, :, None] == kv_docs[:, None, :]
    return (same_doc & (causal & near)[None])[:, None]


def dense_attention_mask(docs: Tensor, window_blocks: Tensor | int, block_size: int = 128) -> Tensor:
    """(B, 1, T, T) bool mask of the token rule for a whole sequence (positions 0..T-1)."""
    pos = torch.arange(docs.shape[1], device=docs.device)
    return document_causal_window_mask(docs, docs, pos, pos, window_blocks, block_size)


class BlockLayout(NamedTuple):
    """Per-forward block structure, independent of the window (reference: computed once, clipped twice).

    ``*_num`` (B, 1, NB) int32 counts and ``*_idx`` (B, 1, NB, NB) int32 key-block indices per query block,
    most recent block first; "full" blocks lie entirely inside the query block's document and strictly before
    it, "partial" blocks need the token-level mask (the diagonal block and document-boundary blocks)."""

    partial_num: Tensor
    partial_idx: Tensor
    full_num: Tensor
    full_idx: Tensor


def _ordered(mask: Tensor) -> tuple[Tensor, Tensor]:
    num = mask.sum(dim=-1, dtype=torch.int32)
    # stable ascending sort of the bool mask puts selected blocks last in ascending index; flip:
    # most recent first
    idx = torch.argsort(mask.to(torch.int8), dim=-1, stable=True).flip(-1).to(torch.int32)
    return num[:, None].contiguous(), idx[:, None].contiguous()


def block_layout(docs: Tensor, block_size: int = 128) -> BlockLayout:
    """Classify every (query block, key block) pair from the first and last document id of each block."""
    B, T = docs.shape
    if T % block_size:
        raise ValueError(
            f"the FlexAttention path needs a sequence length that is a multiple of block_size={block_size} "
            f"(got T={T}); pad the batch or use attention='sdpa'"
        )
    nb = T // block_size
    blocks = docs.view(B, nb, block_size)
    low, high = blocks[..., 0], blocks[..., -1]
    idx = torch.arange(nb, device=docs.device)
    qb, kb = idx[:, None], idx[None, :]
    overlap = (low[:, :, None] <= high[:, None, :]) & (high[:, :, None] >= low[:, None, :])
    any_pair = (qb >= kb)[None] & overlap
    all_pair = (qb > kb)[None] & (low[:, :, None] == high[:, None, :]) & (high[:, :, None] == low[:, None, :])
    partial_num, partial_idx = _ordered(any_pair & ~all_pair)
    full_num, full_idx = _ordered(all_pair)
    return BlockLayout(partial_num, partial_idx, full_num, full_idx)


def flex_block_mask(layout: BlockLayout, docs: Tensor, window_blocks: Tensor, block_size: int = 128):
    """FlexAttention BlockMask of the token rule for a window of ``window_blocks`` blocks (a 0-d int tensor):
    keep the nearest ``max(w - #full, 1)`` partial blocks and the nearest ``w - 1`` full blocks."""
    if BlockMask is None:
        raise RuntimeError("FlexAttention is not available in this torch build; use attention='sdpa'")

    w = window_blocks.to(torch.int32)
    w_tok = torch.clamp(w, min=1)

    def document_causal_window(b, h, q_idx, kv_idx):
        # the whole token rule (the block lists only skip work): eager FlexAttention reads mask_mod alone
        near = (q_idx // block_size - kv_idx // block_size) < w_tok
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx]) & near

    partial_keep = torch.minimum(layout.partial_num, torch.clamp(w - layout.full_num, min=1))
    full_keep = torch.minimum(layout.full_num, torch.clamp(w - 1, min=0))
    return BlockMask.from_kv_blocks(
        partial_keep,
        layout.partial_idx,
        full_keep,
        layout.full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=document_causal_window,
    )


class AttentionMasks(NamedTuple):
    """The two masks of one forward: long-window layers use ``long``, the others ``short`` (half window)."""

    long: object  # BlockMask or (B, 1, Tq, Tk) bool tensor
    short: object


def use_flex_attention(mode: str, device: torch.device) -> bool:
    """Whether attention ``mode`` ("auto", "flex", "sdpa") runs FlexAttention on ``device``.

    auto: FlexAttention where it runs fused and differentiable: CUDA, or CPU inference under torch.compile
    (FlexAttention has no CPU backward); SDPA with the explicit mask everywhere else."""
    if mode == "flex":
        if not FLEX_AVAILABLE:
            raise RuntimeError("attention='flex' but FlexAttention is not in this torch build; use 'sdpa'")
        return True
    if mode == "sdpa" or not FLEX_AVAILABLE:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.compiler.is_compiling() and not torch.is_grad_enabled()


def sequence_masks(
    tokens: Tensor, eod_token_id: int, window_blocks: Tensor, block_size: int, *, flex: bool
) -> AttentionMasks:
    """Long- and short-window masks of a whole sequence: BlockMasks (``flex``) or boolean masks."""
    docs = document_ids(tokens, eod_token_id)
    w_short = torch.div(window_blocks, 2, rounding_mode="floor")
    if flex:
        layout = block_layout(docs, block_size)
        return AttentionMasks(
            flex_block_mask(layout, docs, window_blocks, block_size),
            flex_block_mask(layout, docs, w_short, block_size),
        )
    return AttentionMasks(
        dense_attention_mask(docs, window_blocks, block_size),
        dense_attention_mask(docs, w_short, block_size),
    )


def decode_masks(
    tokens: Tensor, offset: int, eod_token_id: int, window_blocks: Tensor, block_size: int
) -> AttentionMasks:
    """Rectangular masks of the new positions ``offset..T-1`` of ``tokens`` (B, T) against all T positions."""
    docs = document_ids(tokens, eod_token_id)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    w_short = torch.div(window_blocks, 2, rounding_mode="floor")
    return AttentionMasks(
        *(
            document_causal_window_mask(docs[:, offset:], docs, pos[offset:], pos, w, block_size)
            for w in (window_blocks, w_short)
        )
    )
