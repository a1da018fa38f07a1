"""The grouped expert FFN on a CPU: experts run side by side, one core each.

Why: a CPU GEMM over one expert's ~N/E rows split across all cores is less efficient than the dense GEMM
over all N rows (every core gets a thin slice, and every small product ends in a barrier); on 2 cores
``grouped_mm``'s per-group loop was ~10% slower than the dense FFN's GEMMs. Here each expert's whole chain
(adapter ``u = x * scale_e + bias_e``, ``h = u W1ᵀ``, ``a = relu(h)²``, gate, ``out = a W2ᵀ``, and in
backward the four gradient products plus the adapter and gate gradients) runs on one core while the other
cores take other experts, so every GEMM is a one-core GEMM and the elementwise work between them stays in
that core's cache. The tasks run on PyTorch's own OpenMP threads (:mod:`sb_model.kernels.omp_team`).

Work is cut into tasks ``(expert, first_row, end_row)``: an expert's group is cut into near-equal chunks
only when it is larger than one thread's share of the rows (a skewed routing still keeps every core busy),
and tasks are handed out largest first. The weight gradient of a cut expert is the sum of its chunks'
partial products, added in a fixed order (results do not depend on which thread ran which task).

The two halves are ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` calls them as opaque
kernels; their group sizes are read from ``offs`` on the host, which for a CPU tensor is a memory read, not a
device synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sb_model.kernels.omp_team import openmp_team_available, run_on_openmp_team

Task = tuple[int, int, int]  # (expert, first row, end row)


def cpu_parallel_experts_available() -> bool:
    """True where the expert-parallel CPU path can run (PyTorch uses libgomp in this process)."""
    return openmp_team_available()


def plan_tasks(ends: list[int], workers: int) -> list[Task]:
    """Tasks over expert groups with cumulative row ends ``ends``, largest first. A group larger than
    ``ceil(total / workers)`` rows is cut into near-equal chunks no larger than that; empty groups give no
    task."""
    total = ends[-1] if ends else 0
    share = max(1, -(-total // max(1, workers)))
    tasks: list[Task] = []
    start = 0
    for e, end in enumerate(ends):
        n = end - start
        if n > 0:
            pieces = -(-n // share)
            for i in range(pieces):
                a = start + n * i // pieces
                b = start + n * (i + 1) // pieces
                tasks.append((e, a, b))
        start = end
    tasks.sort(key=lambda t: t[1] - t[2])  # largest first (stable: ties keep expert order)
    return tasks


def _ends(offs: Tensor) -> list[int]:
    return offs.tolist()


@torch.library.custom_op("sb_model::cpu_parallel_expert_ffn", mutates_args=())
def _expert_ffn_fwd(
    rows: Tensor,
    w1: Tensor,
    w2: Tensor,
    offs: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
    gate: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """-> (out (R, d), pre-activation h (R, hidden)); see :func:`expert_ffn_cpu_parallel`."""
    rows = rows.contiguous()
    R = rows.shape[0]
    h = rows.new_empty((R, w1.shape[1]))
    out = rows.new_empty((R, w2.shape[1]))

    def task(t: Task) -> None:
        e, a, b = t
        u = rows[a:b] if scale is None else torch.addcmul(bias[e], rows[a:b], scale[e])
        hh = torch.mm(u, w1[e].t(), out=h[a:b])
        act = torch.relu(hh).square_()
        if gate is not None:
            act.mul_(gate[a:b, None])  # gate * (act W2ᵀ) = (gate * act) W2ᵀ
        torch.mm(act, w2[e].t(), out=out[a:b])

    run_on_openmp_team(plan_tasks(_ends(offs), torch.get_num_threads()), task)
    return out, h


@_expert_ffn_fwd.register_fake
def _fwd_fake(rows, w1, w2, offs, scale, bias, gate):  # type: ignore[no-untyped-def]
    R = rows.shape[0]
    return rows.new_empty((R, w2.shape[1])), rows.new_empty((R, w1.shape[1]))


@torch.library.custom_op("sb_model::cpu_parallel_expert_ffn_backward", mutates_args=())
def _expert_ffn_bwd(
    grad: Tensor,
    rows: Tensor,
    h: Tensor,
    w1: Tensor,
    w2: Tensor,
    offs: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
    gate: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (rows, w1, w2, scale, bias, gate) of :func:`_expert_ffn_fwd`'s ``out``; the last three are
    empty tensors where the input was None."""
    grad, rows = grad.contiguous(), rows.contiguous()
    E, R = w1.shape[0], rows.shape[0]
    adapters, gated = scale is not None, gate is not None
    tasks = plan_tasks(_ends(offs), torch.get_num_threads())
    tasks_of: dict[int, list[Task]] = {}  # expert -> its tasks (more than one: a cut expert)
    for t in tasks:
        tasks_of.setdefault(t[0], []).append(t)
    grad_rows = torch.empty_like(rows)
    grad_w1, grad_w2 = torch.empty_like(w1), torch.empty_like(w2)
    grad_scale = torch.empty_like(scale) if adapters else rows.new_empty(0)
    grad_bias = torch.empty_like(bias) if adapters else rows.new_empty(0)
    grad_gate = rows.new_empty(R) if gated else rows.new_empty(0)
    # per-expert results: the final slots, or (cut experts) one private set per task, summed below
    slots: dict[Task, list[Tensor]] = {}
    for t in tasks:
        e = t[0]
        finals = [grad_w1[e], grad_w2[e]] + ([grad_scale[e], grad_bias[e]] if adapters else [])
        slots[t] = [torch.empty_like(f) for f in finals] if len(tasks_of[e]) > 1 else finals

    def task(t: Task) -> None:
        e, a, b = t
        g, x = grad[a:b], rows[a:b]
        dw1, dw2, *dadapt = slots[t]
        r = torch.relu(h[a:b])
        act = r.square()
        da = torch.mm(g, w2[e])  # d out / d act, before the gate
        if gated:
            gt = gate[a:b, None]
            # d out/d gate = act W2ᵀ, so d/d gate = <g, act W2ᵀ> = <g W2, act>
            torch.linalg.vecdot(da, act, out=grad_gate[a:b])
            act.mul_(gt)
            da.mul_(gt)
        torch.mm(g.t(), act, out=dw2)
        dh = da.mul_(r.mul_(2))  # relu(h)² has derivative 2 relu(h)
        u = x if not adapters else torch.addcmul(bias[e], x, scale[e])
        torch.mm(dh.t(), u, out=dw1)
        if not adapters:
            torch.mm(dh, w1[e], out=grad_rows[a:b])
            return
        du = torch.mm(dh, w1[e])
        torch.linalg.vecdot(du, x, dim=0, out=dadapt[0])
        torch.sum(du, 0, out=dadapt[1])
        torch.mul(du, scale[e], out=grad_rows[a:b])

    run_on_openmp_team(tasks, task)
    finals_of = [grad_w1, grad_w2] + ([grad_scale, grad_bias] if adapters else [])
    for e in range(E):
        own = tasks_of.get(e, [])
        if not own:
            for f in finals_of:
                f[e].zero_()
        elif len(own) > 1:
            for i, f in enumerate(finals_of):
                torch.sum(torch.stack([slots[t][i] for t in own]), 0, out=f[e])
    return grad_rows, grad_w1, grad_w2, grad_scale, grad_bias, grad_gate


@_expert_ffn_bwd.register_fake
def _bwd_fake(grad, rows, h, w1, w2, offs, scale, bias, gate):  # type: ignore[no-untyped-def]
    def like(t: Tensor | None) -> Tensor:
        return torch.empty_like(t) if t is not None else rows.new_empty(0)

    gate_grad = rows.new_empty(rows.shape[0]) if gate is not None else rows.new_empty(0)
    return (
        torch.empty_like(rows),
        torch.empty_like(w1),
        torch.empty_like(w2),
        like(scale),
        like(bias),
        gate_grad,
    )


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    rows, w1, w2, offs, scale, bias, gate = inputs
    ctx.adapters, ctx.gated = scale is not None, gate is not None
    saved = [rows, output[1], w1, w2, offs]
    saved += [scale, bias] if ctx.adapters else []
    saved += [gate] if ctx.gated else []
    ctx.save_for_backward(*saved)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_h):  # type: ignore[no-untyped-def]
    if grad_out is None:
        return (None,) * 7
    rows, h, w1, w2, offs, *rest = ctx.saved_tensors
    scale, bias = (rest[0], rest[1]) if ctx.adapters else (None, None)
    gate = rest[-1] if ctx.gated else None
    g_rows, g_w1, g_w2, g_scale, g_bias, g_gate = _expert_ffn_bwd(
        grad_out, rows, h, w1, w2, offs, scale, bias, gate
    )
    return (
        g_rows,
        g_w1,
        g_w2,
        None,
        g_scale if ctx.adapters else None,
        g_bias if ctx.adapters else None,
        g_gate if ctx.gated else None,
    )


_expert_ffn_fwd.register_autograd(_backward, setup_context=_setup_context)


def expert_ffn_cpu_parallel(
    rows: Tensor,
    w1: Tensor,
    w2: Tensor,
    offs: Tensor,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
    gate: Tensor | None = None,
) -> Tensor:
    """``gate[i] * FFN_e(rows[i] * scale[e] + bias[e])`` for every row i of expert group e -> (R, d).

    rows (R, d) sorted by expert with cumulative group ends ``offs`` (E,); ``scale``/``bias`` (E, d) are the
    per-expert adapters (both or neither), ``gate`` (R,) the per-row gate. CPU tensors only."""
    if rows.device.type != "cpu":
        raise ValueError(f"the expert-parallel CPU FFN runs on CPU tensors only (got {rows.device})")
    if (scale is None) != (bias is None):
        raise ValueError("expert_ffn_cpu_parallel: pass both adapter tensors (scale and bias) or neither")
    return _expert_ffn_fwd(rows, w1, w2, offs, scale, bias, gate)[0]
