"""Vectorised, causal EMA context features for the routers (spec 2.8.4).

All functions take activations shaped (B, T, D) and return the same shape, computed in float32
(float64 inputs stay float64) and cast back to
the input dtype. None of them loops in Python over tokens, documents or blocks, and none reads a tensor value
on the host, so they trace into one graph under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 64


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for 16-bit activations, float64 kept for float64 (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def document_ids(doc_start: Tensor) -> Tensor:
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
    """The fixed (causal) reverse-EMA feature of the reference, spec 2.8.4 "HEAD":

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
    """A causal EMA restarted at every document start (spec 7.1's 'real causal document-local feature')."""
    return segmented_ema(x, alpha, document_ids(doc_start), chunk)
