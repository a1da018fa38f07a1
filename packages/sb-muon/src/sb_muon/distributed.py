"""Splitting the orthogonalization work across ranks.

Gradients are assumed to be identical on every rank already (all-reduced by DDP or by the
training loop). Every rank updates the cheap element-wise momentum for every parameter, but
each rank orthogonalizes only the parameters it owns. The owners then broadcast their results
(one flat buffer per rank and dtype), and every rank applies every update itself, so all ranks
end with bit-identical parameters while the expensive matrix work is divided by the world size.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch
import torch.distributed as dist


def world_and_rank(process_group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(world size, rank) of the group, or (1, 0) when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(process_group), dist.get_rank(process_group)


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Give each work item to a rank so that the largest per-rank total cost stays small.

    Greedy longest-processing-time-first; ties break by index, so every rank computes the same
    assignment from the same list of costs.
    """
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [(0.0, r) for r in range(world_size)]
    owners = [0] * len(costs)
    for i in order:
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + costs[i], rank))
    return owners


def share_results(
    results: dict[int, torch.Tensor],
    templates: Sequence[torch.Tensor],
    owners: Sequence[int],
    process_group: dist.ProcessGroup | None,
) -> list[torch.Tensor]:
    """Give every rank every item's result.

    `results` holds this rank's own items (index -> tensor); `templates[i]` has the shape, dtype
    and device of item i's result. Each rank broadcasts one flat buffer per dtype; the calls are
    issued asynchronously and waited for together.
    """
    _, rank = world_and_rank(process_group)
    out: list[torch.Tensor | None] = [results.get(i) for i in range(len(templates))]
    buckets: dict[tuple[int, torch.dtype], list[int]] = {}
    for i, owner in enumerate(owners):
        buckets.setdefault((owner, templates[i].dtype), []).append(i)
    pending = []
    for (owner, dtype), items in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        device = templates[items[0]].device
        if owner == rank:
            flat = torch.cat([results[i].reshape(-1) for i in items])
        else:
            flat = torch.empty(sum(templates[i].numel() for i in items), dtype=dtype, device=device)
        src = dist.get_global_rank(process_group, owner) if process_group is not None else owner
        work = dist.broadcast(flat, src=src, group=process_group, async_op=True)
        pending.append((work, owner, flat, items))
    for work, owner, flat, items in pending:
        work.wait()
        if owner == rank:
            continue
        offset = 0
        for i in items:
            n = templates[i].numel()
            out[i] = flat[offset:offset + n].view_as(templates[i])
            offset += n
    return out  # type: ignore[return-value]
