"""Sorted-token dispatch: which padded row of the grouped matmul serves which (token, choice).

Static shapes only: the number of rows R is a Python function of (N, k, E, capacity, align), never of the
routing itself, so nothing here syncs with the host or recompiles when the routing changes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Dispatch(NamedTuple):
    row_token: Tensor  # (R,) int64: token whose input fills each row (padding rows point at token 0, gate 0)
    row_expert: Tensor  # (R,) int64: expert of each row
    row_choice: Tensor  # (R,) int64: flat choice index (token * k + choice) a row serves (0 for padding rows)
    row_used: Tensor  # (R,) bool: the row serves a choice (False for padding rows)
    offs: Tensor  # (E,) int32: cumulative end row of each expert group; offs[-1] == R
    dest: Tensor  # (N, k) int64: row that serves each choice (0 where the choice is not served)
    served: Tensor  # (N, k) bool: the choice names a live expert and fits in that expert's capacity
    demanded_counts: Tensor  # (E,) float32: valid choices per expert (before capacity)
    served_counts: Tensor  # (E,) float32: served choices per expert


def capacity_for(num_tokens: int, k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """Per-expert capacity ceil(cf * N * k / E), or None (dropless)."""
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * num_tokens * k / num_experts))


def padded_rows(num_assignments: int, num_experts: int, align: int, capacity: int | None) -> int:
    """Rows of the dispatch buffer: enough for every served choice with each group rounded up to ``align``."""
    rows = num_assignments + num_experts * (align - 1)
    if capacity is not None:
        rows = min(rows, num_experts * (-(-capacity // align) * align))
    return max(align, -(-rows // align) * align)


def build_dispatch(
    topk_idx: Tensor,
    valid: Tensor,
    priority: Tensor,
    num_experts: int,
    *,
    capacity: int | None,
    align: int = 1,
) -> Dispatch:
    """Sort the N*k choices by expert and lay them out in expert groups padded to ``align`` rows.

    ``priority`` (N, k) holds distinct integers; inside an expert, choices with a lower priority are placed
    (and, under a capacity, kept) first. Position-major priorities make capacity dropping causal: a choice is
    dropped
    only because of choices made at earlier positions.
    """
    N, k = topk_idx.shape
    E = num_experts
    A = N * k
    device = topk_idx.device
    expert = torch.where(valid, topk_idx, torch.full_like(topk_idx, E)).reshape(A)
    prio = priority.reshape(A)
    perm = torch.argsort(expert * A + prio)
    sorted_expert = expert[perm]
    counts = torch.zeros(E + 1, dtype=torch.int64, device=device).scatter_add_(
        0, expert, torch.ones_like(expert)
    )
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(A, device=device) - group_start[sorted_expert]
    keep_sorted = sorted_expert < E
    if capacity is not None:
        keep_sorted = keep_sorted & (rank < capacity)
        kept_counts = counts[:E].clamp(max=capacity)
    else:
        kept_counts = counts[:E]
    R = padded_rows(A, E, align, capacity)
    padded = (kept_counts + (align - 1)) // align * align
    ends = torch.cumsum(padded, 0)
    pad_start = ends - padded
    ends = torch.cat([ends[:-1], torch.full_like(ends[-1:], R)])  # the last group absorbs the spare rows
    safe_expert = sorted_expert.clamp(max=E - 1)
    dest_sorted = torch.where(keep_sorted, pad_start[safe_expert] + rank, torch.full_like(rank, R))
    # dropped choices land in the spare slot R, which is cut off
    row_choice = torch.zeros(R + 1, dtype=torch.int64, device=device).scatter_(0, dest_sorted, perm)[:R]
    row_used = torch.zeros(R + 1, dtype=torch.bool, device=device).scatter_(0, dest_sorted, keep_sorted)[:R]
    row_token = row_choice // k
    row_expert = torch.bucketize(torch.arange(R, device=device), ends, right=True).clamp(max=E - 1)
    dest = torch.empty_like(dest_sorted).scatter_(0, perm, dest_sorted).view(N, k)
    served = dest < R
    dest = torch.where(served, dest, torch.zeros_like(dest))
    return Dispatch(
        row_token=row_token,
        row_expert=row_expert,
        row_choice=row_choice,
        row_used=row_used,
        offs=ends.to(torch.int32),
        dest=dest,
        served=served,
        demanded_counts=counts[:E].float(),
        served_counts=kept_counts.float(),
    )


@torch.library.custom_op("sb_model::index_add_rows", mutates_args=())
def index_add_rows(src: Tensor, index: Tensor, num_rows: int) -> Tensor:
    """(num_rows, d) zeros with ``src[i]`` added into row ``index[i]`` (ATen's index_add_).

    A custom op so that ``torch.compile`` calls ATen's kernel instead of generating its own scatter:
    inductor's CPU scatter-add is an atomic add per element, and when many rows land in few targets (adapter
    rows of 8 experts, the reverse snapshot's source rows) the two cores fight over the same cache lines
    (measured ~4x slower than ATen at 2 threads)."""
    out = torch.zeros((num_rows, *src.shape[1:]), dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


@index_add_rows.register_fake
def _index_add_rows_fake(src: Tensor, index: Tensor, num_rows: int) -> Tensor:
    return src.new_empty((num_rows, *src.shape[1:]))


class _IndexSelectRows(torch.autograd.Function):
    """``src.index_select(0, index)`` whose backward is :func:`index_add_rows` (many-to-one friendly)."""

    @staticmethod
    def forward(ctx, src, index):  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.num_rows = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return index_add_rows(grad.contiguous(), index, ctx.num_rows), None


def index_select_rows(src: Tensor, index: Tensor) -> Tensor:
    """Rows ``src[index]`` for an index that may repeat rows (gradients are summed with ATen's index_add)."""
    return _IndexSelectRows.apply(src, index)


def is_bijection(k: int, capacity: int | None, align: int) -> bool:
    """True when every row serves exactly one choice and every choice is served, decided from static facts:
    top-1 (the choice always names a live expert: ``shape_logits`` leaves live logits finite unless they
    overflow float32 after the temperature division, and dead ones are -inf), no capacity and no group
    padding. Then the two row gathers are permutations and need no masks."""
    return k == 1 and capacity is None and align == 1


class _RowGather(torch.autograd.Function):
    """``out[i] = src[index[i]]`` (zero where ``mask[i]`` is False) whose backward is a gather too.

    ``index`` must hit every source row at most once per backward pair: source row ``s`` is read by the output
    rows ``back_index[s, j]`` for which ``back_mask[s, j]`` holds (the inverse map, k entries per source row).
    The dispatch's two maps are inverse to each other (token choice <-> padded row), so the gradient is
    ``grad_src[s] = sum_j grad_out[back_index[s, j]]`` over unmasked j: a gather and a k-way sum instead of a
    zero-filled buffer plus a scatter-add (index_select's backward; under inductor on CPU an atomic add)."""

    @staticmethod
    def forward(ctx, src, index, mask, back_index, back_mask):  # type: ignore[override]
        out = src.index_select(0, index)
        if mask is not None:
            out = torch.where(mask[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        ctx.save_for_backward(back_index, back_mask)
        ctx.has_back_mask = back_mask is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        back_index, back_mask = ctx.saved_tensors
        M, k = back_index.shape
        g = grad.index_select(0, back_index.reshape(-1))
        if ctx.has_back_mask:
            g = torch.where(back_mask.reshape(-1, 1), g, torch.zeros((), dtype=g.dtype, device=g.device))
        if k > 1:
            g = g.view(M, k, -1).sum(dim=1)
        return g, None, None, None, None


def gather_rows(
    src: Tensor, index: Tensor, mask: Tensor | None, back_index: Tensor, back_mask: Tensor | None
) -> Tensor:
    """(len(index), d) rows of ``src`` (see :class:`_RowGather`); ``back_index`` (len(src), k) is the inverse
    map. Masks may be None only when the map is a bijection (:func:`is_bijection`)."""
    return _RowGather.apply(src, index, mask, back_index, back_mask)


def dispatch_rows(x: Tensor, disp: Dispatch, bijection: bool) -> Tensor:
    """(R, d) expert-sorted input rows from the (N, d) tokens; padding rows are zero."""
    return gather_rows(
        x, disp.row_token, None if bijection else disp.row_used, disp.dest, None if bijection else disp.served
    )


def dispatch_choice_values(values: Tensor, disp: Dispatch, bijection: bool) -> Tensor:
    """(R, m) per-row copies of the (N * k, m) per-choice ``values`` (e.g. gates); padding rows are zero."""
    return gather_rows(
        values,
        disp.row_choice,
        None if bijection else disp.row_used,
        disp.dest.reshape(-1, 1),
        None if bijection else disp.served.reshape(-1, 1),
    )


def combine_rows(out_rows: Tensor, disp: Dispatch, bijection: bool) -> Tensor:
    """(N * k, d) expert outputs in (token, choice) order; unserved choices are zero."""
    return gather_rows(
        out_rows,
        disp.dest.reshape(-1),
        None if bijection else disp.served.reshape(-1),
        disp.row_choice[:, None],
        None if bijection else disp.row_used[:, None],
    )


def position_major_priority(batch: int, seq_len: int, k: int, device: torch.device) -> Tensor:
    """(B*T, k) priorities ordered by (position, sequence, choice) for tokens flattened as (B, T)."""
    b = torch.arange(batch, device=device)[:, None, None]
    t = torch.arange(seq_len, device=device)[None, :, None]
    r = torch.arange(k, device=device)[None, None, :]
    return (t * (batch * k) + b * k + r).reshape(batch * seq_len, k)
