"""Expert weights and the grouped expert FFN: FFN_e(u) = W2[e] · relu(W1[e] · u)² (ReLU², no biases).

Weights are stacked, experts along dim 0, in nn.Linear layout: ``w1`` (E, h, d) and ``w2`` (E, d, h).
Two implementations of the grouped product, chosen per call from static facts (device, dtype, shapes):

* ``grouped_mm``: ``torch.nn.functional.grouped_mm`` (or ``torch._grouped_mm`` on older torch), one call per
  projection over the expert-sorted rows;
* ``blocked_bmm``: the rows are grouped in blocks of a fixed size that never straddle two experts (dispatch
  pads
  each group to the block size), each block gathers its expert's weights, and one ``bmm`` runs all blocks. It
  needs no grouped-GEMM kernel (float64, old torch, unaligned shapes) and is still one batched call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def init_linear_(w: Tensor, fan_in: int | None = None) -> Tensor:
    """The reference's init: U(-b, b) with b = sqrt(3) * 0.5 / sqrt(fan_in), fan_in = last dim by default."""
    fan = w.shape[-1] if fan_in is None else fan_in
    bound = math.sqrt(3.0) * 0.5 / math.sqrt(fan)
    with torch.no_grad():
        return w.uniform_(-bound, bound)


def relu_squared(h: Tensor) -> Tensor:
    return torch.relu(h).square()


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


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, dims: tuple[int, ...]) -> bool:
    """True if the grouped-GEMM kernel can run these shapes: a kernel exists for the device/dtype and every
    inner dimension's row stride is a multiple of 16 bytes (the kernels' alignment rule)."""
    if _GROUPED_MM is None or dtype not in _GROUPED_DTYPES:
        return False
    elem = torch.empty((), dtype=dtype).element_size()
    if any((d * elem) % 16 for d in dims):
        return False
    if device.type == "cuda":
        # SM90+ has the fused kernel; on SM80 torch falls back to a loop that syncs with the host, so the
        # sync-free blocked path is used there instead.
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (9, 0)
    if device.type == "cpu":
        return _CPU_PROBE.get(dtype, False)
    return False


def _grouped(a: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    assert _GROUPED_MM is not None
    return _GROUPED_MM(a, w.transpose(-2, -1), offs=offs)


def expert_ffn_grouped(rows: Tensor, w1: Tensor, w2: Tensor, offs: Tensor) -> Tensor:
    """rows (R, d) sorted by expert with group ends ``offs`` (E,) int32 -> (R, d)."""
    h = _grouped(rows, w1, offs)
    return _grouped(relu_squared(h), w2, offs)


def expert_ffn_blocked(rows: Tensor, w1: Tensor, w2: Tensor, row_expert: Tensor, block_rows: int) -> Tensor:
    """Same result with one bmm over blocks of ``block_rows`` rows (R must be a multiple of it and every block
    must belong to one expert, which :func:`~sb_model.dispatch.build_dispatch` guarantees with
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


def dense_expert_ffn(u: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """One expert on all of ``u`` (used by tests, benchmarks and the naive baseline)."""
    return relu_squared(u @ w1.t()) @ w2.t()
