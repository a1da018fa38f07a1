"""The expert FFNs on dispatched rows: FFN_e(u) = W2[e] · relu(W1[e] · u)² (ReLU², no biases).

Weights are stacked, experts along dim 0, in nn.Linear layout: ``w1`` (E, h, d) and ``w2`` (E, d, h).
Three implementations of the grouped product, chosen per call from static facts (device, dtype, shapes,
threads) by :func:`choose_expert_impl`:

* ``grouped_mm``: ``torch.nn.functional.grouped_mm`` (or ``torch._grouped_mm`` on older torch), one call per
  projection over the expert-sorted rows;
* ``blocked_bmm``: the rows are grouped in blocks of a fixed size that never straddle two experts (dispatch
  pads
  each group to the block size), each block gathers its expert's weights, and one ``bmm`` runs all blocks. It
  needs no grouped-GEMM kernel (float64, old torch, unaligned shapes) and is still one batched call;
* ``cpu_parallel``: on a CPU with several threads, each expert's whole chain on one core
  (:mod:`sb_model.kernels`).

:func:`expert_outputs` runs the chosen one between the dispatch and the combine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sb_model.bank.config import BankConfig
from sb_model.bank.dispatch import (
    Dispatch,
    combine_rows,
    dispatch_choice_values,
    dispatch_rows,
    index_select_rows,
)
from sb_model.functional import relu_squared
from sb_model.kernels import cpu_parallel_experts_available, expert_ffn_cpu_parallel

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_CPU_PROBE: dict[torch.dtype, bool] = {}


def probe_cpu_grouped_mm() -> dict[torch.dtype, bool]:
    """Find out once, eagerly, for which dtypes this torch build runs grouped_mm on CPU (forward and
    backward, exact against a loop). The bank calls this at construction; compiled code only reads the
    answer."""
    if not _CPU_PROBE:
        for dtype in _GROUPED_DTYPES:
            _CPU_PROBE[dtype] = _cpu_grouped_mm_works(dtype)
    return _CPU_PROBE


def _cpu_grouped_mm_works(dtype: torch.dtype) -> bool:
    if _GROUPED_MM is None:
        return False
    try:
        gen = torch.Generator().manual_seed(0)  # never touch the global RNG (model init must be reproducible)
        a = torch.randn(8, 16, generator=gen).to(dtype).requires_grad_()
        b = torch.randn(2, 16, 16, generator=gen).to(dtype).requires_grad_()
        offs = torch.tensor([3, 8], dtype=torch.int32)
        out = _GROUPED_MM(a, b, offs=offs)
        out.backward(torch.ones_like(out))
        ref = torch.cat([a[:3] @ b[0], a[3:] @ b[1]])
        return bool(torch.allclose(out.float(), ref.float(), atol=1e-2, rtol=1e-2))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, dims: tuple[int, ...], *,
                         capability: tuple[int, int] | None = None, cpu_grouped: bool | None = None) -> bool:
    """True if the grouped-GEMM kernel can run these shapes: a kernel exists for the device/dtype and every
    inner dimension's row stride is a multiple of 16 bytes (the kernels' alignment rule). ``capability``
    (CUDA) and ``cpu_grouped`` (the CPU probe's answer) state hardware facts instead of asking."""
    if _GROUPED_MM is None or dtype not in _GROUPED_DTYPES:
        return False
    elem = torch.empty((), dtype=dtype).element_size()
    if any((d * elem) % 16 for d in dims):
        return False
    if device.type == "cuda":
        # SM90+ has the fused kernel; on SM80 torch falls back to a loop that syncs with the host, so the
        # sync-free blocked path is used there instead.
        if capability is None:
            if not torch.cuda.is_available():
                return False
            capability = torch.cuda.get_device_capability(device)
        return capability >= (9, 0)
    if device.type == "cpu":
        return _CPU_PROBE.get(dtype, False) if cpu_grouped is None else cpu_grouped
    return False


def _grouped(a: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    assert _GROUPED_MM is not None
    if a.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # autocast has no rule for grouped_mm (it would run fp32 under bf16 autocast, unlike the bmm path)
        dtype = torch.get_autocast_dtype("cuda")
        a, w = a.to(dtype), w.to(dtype)
    return _GROUPED_MM(a, w.transpose(-2, -1), offs=offs)


def expert_ffn_grouped(rows: Tensor, w1: Tensor, w2: Tensor, offs: Tensor) -> Tensor:
    """rows (R, d) sorted by expert with group ends ``offs`` (E,) int32 -> (R, d)."""
    h = _grouped(rows, w1, offs)
    return _grouped(relu_squared(h), w2, offs)


def expert_ffn_blocked(rows: Tensor, w1: Tensor, w2: Tensor, row_expert: Tensor, block_rows: int) -> Tensor:
    """Same result with one bmm over blocks of ``block_rows`` rows (R must be a multiple of it and every block
    must belong to one expert, which :func:`~sb_model.bank.dispatch.build_dispatch` guarantees with
    align=block)."""
    R, d = rows.shape
    if R % block_rows:
        raise ValueError(f"blocked expert FFN needs rows ({R}) to be a multiple of block_rows ({block_rows})")
    nb = R // block_rows
    block_expert = row_expert.view(nb, block_rows)[:, 0]
    xb = rows.view(nb, block_rows, d)
    h = torch.bmm(xb, w1.index_select(0, block_expert).transpose(1, 2))
    out = torch.bmm(relu_squared(h), w2.index_select(0, block_expert).transpose(1, 2))
    return out.reshape(R, w2.shape[1])


@torch.compiler.assume_constant_result
def _cpu_parallel_pays() -> bool:
    """``expert_impl="auto"`` on a CPU: experts side by side when there are cores to spread them over and the
    OpenMP team is usable. With one thread the tasks would run one after another, and ``grouped_mm`` measured
    faster there (1.13x vs 1.23x the dense FFN, compiled). Decided when a graph is traced."""
    return torch.get_num_threads() > 1 and cpu_parallel_experts_available()


def choose_expert_impl(config: BankConfig, x: Tensor, weight_dtype: torch.dtype) -> tuple[str, int]:
    """(implementation, rows per group alignment) for input ``x``: "cpu_parallel", "grouped" or "blocked"."""
    return expert_impl_for(config, x.device, weight_dtype)


def expert_impl_for(config: BankConfig, device: torch.device, weight_dtype: torch.dtype, *,
                    capability: tuple[int, int] | None = None, cpu_parallel_pays: bool | None = None,
                    cpu_grouped: bool | None = None) -> tuple[str, int]:
    """:func:`choose_expert_impl` for a device; the keyword facts (see :func:`grouped_mm_supported`; whether
    the CPU expert kernel pays) replace asking this machine (sb-train's device plan)."""
    if config.expert_impl == "blocked_bmm":
        return "blocked", config.fallback_block_rows
    on_cpu = device.type == "cpu"
    if config.expert_impl == "cpu_parallel" and not on_cpu:
        raise RuntimeError(
            f"expert_impl='cpu_parallel' runs on CPU tensors only (got {device.type}); use "
            "expert_impl='auto'"
        )
    if config.expert_impl == "cpu_parallel" or (config.expert_impl == "auto" and on_cpu and (
            _cpu_parallel_pays() if cpu_parallel_pays is None else cpu_parallel_pays)):
        return "cpu_parallel", config.group_align or 1
    ok = grouped_mm_supported(device, weight_dtype, (config.model_dim, config.ffn_hidden),
                              capability=capability, cpu_grouped=cpu_grouped)
    if config.expert_impl == "grouped_mm" and not ok:
        raise RuntimeError(
            f"expert_impl='grouped_mm' but grouped_mm cannot run here (device={device.type}, "
            f"dtype={weight_dtype}, model_dim={config.model_dim}, ffn_hidden={config.ffn_hidden}; it needs "
            "float32/bfloat16/float16 and 16-byte aligned rows). Use expert_impl='auto' or 'blocked_bmm'."
        )
    if ok:
        return "grouped", config.group_align or (16 if device.type == "cuda" else 1)
    return "blocked", config.fallback_block_rows


def expert_outputs(
    impl: str,
    align: int,
    x: Tensor,
    disp: Dispatch,
    bijection: bool,
    gate: Tensor,
    w1: Tensor,
    w2: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """(N, d) gated sum over each token's served choices of its experts' outputs.

    ``x`` (N, d) tokens, ``gate`` (N, k) gate values (0 for unserved choices), ``scale``/``bias`` (E, d) the
    layer's adapters (an expert e's input rows become ``bias[e] + rows * scale[e]``) or None."""
    N, d = x.shape
    k = gate.shape[1]
    rows = dispatch_rows(x, disp, bijection)
    if impl == "cpu_parallel":
        # adapters and gates are applied inside the expert tasks, while each row is in cache
        row_gate = dispatch_choice_values(gate.reshape(N * k, 1), disp, bijection).view(-1)
        out_rows = expert_ffn_cpu_parallel(rows.to(w1.dtype), w1, w2, disp.offs, scale, bias, row_gate)
        picked = combine_rows(out_rows, disp, bijection)
        return picked if k == 1 else picked.view(N, k, d).sum(dim=1)
    if scale is not None:
        assert bias is not None
        rows = torch.addcmul(
            index_select_rows(bias, disp.row_expert), rows, index_select_rows(scale, disp.row_expert)
        )
    rows = rows.to(w1.dtype)
    if impl == "grouped":
        out_rows = expert_ffn_grouped(rows, w1, w2, disp.offs)
    else:
        out_rows = expert_ffn_blocked(rows, w1, w2, disp.row_expert, align)
    picked = combine_rows(out_rows, disp, bijection)
    # top-1: (N, d) * (N, 1), no (N, 1, d) view to select from (a select's backward zero-fills a copy)
    return picked * gate if k == 1 else (picked.view(N, k, d) * gate[..., None]).sum(dim=1)
