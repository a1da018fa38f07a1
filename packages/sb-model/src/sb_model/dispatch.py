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
    token_sorted = perm // k
    row_token = torch.zeros(R + 1, dtype=torch.int64, device=device).scatter_(0, dest_sorted, token_sorted)[
        :R
    ]
    row_expert = torch.bucketize(torch.arange(R, device=device), ends, right=True).clamp(max=E - 1)
    dest = torch.empty_like(dest_sorted).scatter_(0, perm, dest_sorted).view(N, k)
    served = dest < R
    dest = torch.where(served, dest, torch.zeros_like(dest))
    return Dispatch(
        row_token=row_token,
        row_expert=row_expert,
        offs=ends.to(torch.int32),
        dest=dest,
        served=served,
        demanded_counts=counts[:E].float(),
        served_counts=kept_counts.float(),
    )


def position_major_priority(batch: int, seq_len: int, k: int, device: torch.device) -> Tensor:
    """(B*T, k) priorities ordered by (position, sequence, choice) for tokens flattened as (B, T)."""
    b = torch.arange(batch, device=device)[:, None, None]
    t = torch.arange(seq_len, device=device)[None, :, None]
    r = torch.arange(k, device=device)[None, None, :]
    return (t * (batch * k) + b * k + r).reshape(batch * seq_len, k)
