"""Router input features: the per-token flags and the causal EMA context features.

(docs/design/bank.md, router features.) Flags and document starts depend only on the token ids; the GPT
builds them once per forward. The EMA functions take activations shaped (B, T, D) and return the same shape,
computed in float32 (float64 inputs stay float64) and cast back to the input dtype. None of them loops in
Python over tokens, documents or blocks, and none reads a tensor value on the host, so they trace into one
graph under ``torch.compile(fullgraph=True)``.
Which layer's input an EMA feature is computed from is the router's rule (:mod:`sb_model.bank.router`).
"""

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


# ---------------------------------------------------------------------------------------- EMA features
DEFAULT_CHUNK = 64


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for 16-bit activations, float64 kept for float64 (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def segment_ids_from_starts(doc_start: Tensor) -> Tensor:
    """Segment id per token from a (B, T) bool "a document starts here" mask (position 0 always starts)."""
    starts = doc_start.clone()
    starts[:, 0] = True
    return torch.cumsum(starts.to(torch.int64), dim=1)


def segmented_ema(
    x: Tensor, alpha: Tensor | float, segment_ids: Tensor | None = None, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """y_t = a * y_{t-1} + (1 - a) * x_t, restarted from 0 wherever the segment id changes.

    Two-level closed form with only non-negative powers of ``a`` (no overflow, unlike the reference's
    a^(-i) blockwise form): inside each chunk of ``chunk`` tokens a lower-triangular (C, C) decay matrix;
    across
    chunks, the carried end-of-chunk values solve the same recurrence with an (nc, nc) matrix.
    """
    if x.dim() != 3:
        raise ValueError(f"segmented_ema expects x of shape (B, T, D), got {tuple(x.shape)}")
    B, T, D = x.shape
    if segment_ids is None:
        segment_ids = torch.zeros(B, T, dtype=torch.int64, device=x.device)
    if segment_ids.shape != (B, T):
        raise ValueError(f"segment_ids must have shape (B, T)={(B, T)}, got {tuple(segment_ids.shape)}")
    cdt = _compute_dtype(x)
    a = torch.as_tensor(alpha, device=x.device).to(cdt)
    C = max(1, min(chunk, T))
    nc = -(-T // C)
    pad = nc * C - T
    xf = x.to(cdt)
    seg = segment_ids
    if pad:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, pad))
        # padded tokens get a fresh segment so that they never feed real ones (they sit at the end anyway)
        seg = torch.cat([seg, seg[:, -1:].expand(B, pad) + 1], dim=1)
    xc = xf.view(B, nc, C, D)
    sc = seg.view(B, nc, C)
    idx = torch.arange(C, device=x.device)
    lag = idx[:, None] - idx[None, :]  # j - i
    causal = lag >= 0
    decay = torch.where(causal, a ** lag.clamp(min=0).to(cdt), torch.zeros((), device=x.device))  # (C, C)
    same = sc[:, :, :, None] == sc[:, :, None, :]  # (B, nc, C, C)
    local_w = (1 - a) * decay * same
    y_local = local_w @ xc  # (B, nc, C, D)
    if nc == 1:
        return y_local.reshape(B, nc * C, D)[:, :T].to(x.dtype)
    # Carry across chunks: c_b = a^C * c_{b-1} * [same segment] + l_b, solved in closed form.
    last = y_local[:, :, -1, :]  # (B, nc, D)
    end_seg = sc[:, :, -1]  # (B, nc)
    bidx = torch.arange(nc, device=x.device)
    blag = bidx[:, None] - bidx[None, :]
    bdecay = torch.where(blag >= 0, (a**C) ** blag.clamp(min=0).to(cdt), torch.zeros((), device=x.device))
    bsame = end_seg[:, :, None] == end_seg[:, None, :]
    carry = (bdecay * bsame) @ last  # (B, nc, D): full EMA value at the end of each chunk
    prev = torch.cat([torch.zeros_like(carry[:, :1]), carry[:, :-1]], dim=1)  # value entering chunk b
    prev_seg = torch.cat([torch.full_like(end_seg[:, :1], -1), end_seg[:, :-1]], dim=1)
    inherit = (sc == prev_seg[:, :, None]).to(cdt) * a ** (idx + 1).to(cdt)  # (B, nc, C)
    y = y_local + inherit[..., None] * prev[:, :, None, :]
    return y.reshape(B, nc * C, D)[:, :T].to(x.dtype)


def reference_forward_ema(
    x: Tensor, alpha: Tensor | float, window: int, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """The reference's forward EMA: not document-aware; only the first ``window`` tokens of the sequence are
    averaged (0 < window < T) and every later token gets the value at ``window - 1``. ``window <= 0`` or
    ``>= T`` averages the whole sequence. Causal: position t only sees tokens <= t."""
    T = x.shape[1]
    if window <= 0 or window >= T:
        return segmented_ema(x, alpha, None, chunk)
    head = segmented_ema(x[:, :window], alpha, None, chunk)
    tail = head[:, -1:, :].expand(-1, T - window, -1)
    return torch.cat([head, tail], dim=1)


def causal_reverse_snapshot(x: Tensor, alpha: Tensor | float, doc_start: Tensor, window: int) -> Tensor:
    """The fixed (causal) reverse-EMA feature of the reference (docs/design/bank.md, router features):

    with s the start of t's document, r_t = (1 - a) * x_{s + W - 1} once t >= s + W, and 0 before.
    (The leaky record version gave the first W tokens an EMA over their own future; we do not build it.)
    """
    if x.dim() != 3 or doc_start.shape != x.shape[:2]:
        raise ValueError(
            f"causal_reverse_snapshot expects x (B, T, D) and doc_start (B, T); got {tuple(x.shape)} and "
            f"{tuple(doc_start.shape)}"
        )
    B, T, D = x.shape
    flat_src, coef = reverse_snapshot_plan(alpha, doc_start, window, _compute_dtype(x))
    # row gather on the flattened tokens (index_select: its backward is a fast row index_add)
    snap = x.reshape(B * T, D).index_select(0, flat_src).to(coef.dtype)
    return (snap * coef[:, None]).view(B, T, D).to(x.dtype)


def reverse_snapshot_plan(
    alpha: Tensor | float, doc_start: Tensor, window: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """The reverse snapshot as a row gather: (src (B*T,) int64, coef (B*T,) ``dtype``) such that
    ``causal_reverse_snapshot(x)`` flattened to (B*T, D) equals ``x_flat[src] * coef[:, None]``.

    The feature is linear in x, so the bank applies the router weight first and gathers (B*T, E) logit
    contributions instead of (B*T, D) features."""
    B, T = doc_start.shape
    device = doc_start.device
    a = torch.as_tensor(alpha, device=device).to(dtype)
    pos = torch.arange(T, device=device).expand(B, T)
    starts = doc_start.clone()
    starts[:, 0] = True
    last_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=1).values
    ready = (pos - last_start) >= window
    src = (last_start + (window - 1)).clamp(max=T - 1)
    flat_src = (src + torch.arange(B, device=device)[:, None] * T).reshape(B * T)
    coef = ((1 - a) * ready.to(dtype)).reshape(B * T)
    return flat_src, coef


def document_ema(x: Tensor, alpha: Tensor | float, doc_start: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """A causal EMA restarted at every document start (the causal document-local feature of
    docs/design/deviations.md D1)."""
    return segmented_ema(x, alpha, segment_ids_from_starts(doc_start), chunk)
