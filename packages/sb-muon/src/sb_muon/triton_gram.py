"""Triton kernel for the symmetric products of Newton–Schulz: C = alpha · X Xᵀ (+ beta · C_in).

X Xᵀ is symmetric, so only the tiles on and below the diagonal are computed; each off-diagonal
tile is written twice (as is and transposed). That halves the work of the two Gram-type
products per iteration (A = X Xᵀ, and A² = A Aᵀ since A is symmetric). The third product
(B X) is an ordinary matmul and stays with torch.

Runs on CUDA, and on the CPU under the Triton interpreter (TRITON_INTERPRET=1), which is how
the tests check it against the plain PyTorch products on machines without a GPU.

K (the inner dimension) is a compile-time constant: one specialisation per matrix width, a
handful per model. (It also keeps the loop bound a Python int, which the Triton 3.6
interpreter needs with NumPy >= 2.3.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gram_kernel(
    X, C_in, C_out,
    M, K: tl.constexpr,
    sxb, sxm, sxk,
    sib, sim, sin,
    sob, som, son,
    alpha, beta,
    HAS_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    if pid_n > pid_m:  # upper triangle: written by the mirrored tile
        return
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    x_base = X + batch * sxb
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(x_base + rm[:, None] * sxm + kk[None, :] * sxk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(x_base + rn[:, None] * sxm + kk[None, :] * sxk,
                    mask=(rn[:, None] < M) & (kk[None, :] < K), other=0.0)
        acc += tl.dot(a, tl.trans(b))
    acc = acc * alpha
    mask = (rm[:, None] < M) & (rn[None, :] < M)
    if HAS_C:
        c = tl.load(C_in + batch * sib + rm[:, None] * sim + rn[None, :] * sin, mask=mask, other=0.0)
        acc += beta * c.to(tl.float32)
    out = acc.to(C_out.dtype.element_ty)
    o_base = C_out + batch * sob
    tl.store(o_base + rm[:, None] * som + rn[None, :] * son, out, mask=mask)
    if pid_n < pid_m:
        mask_t = (rn[:, None] < M) & (rm[None, :] < M)
        tl.store(o_base + rn[:, None] * som + rm[None, :] * son, tl.trans(out), mask=mask_t)


def gram(
    X: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.0,
    C: torch.Tensor | None = None,
    block_m: int = 64,
    block_k: int = 32,
) -> torch.Tensor:
    """alpha · X Xᵀ + beta · C for X of shape (B, M, K) and symmetric C of shape (B, M, M).

    Accumulates in fp32 and returns X's dtype.
    """
    if X.ndim != 3:
        raise ValueError(f"gram expects a (batch, rows, cols) tensor, got shape {tuple(X.shape)}")
    batch, M, K = X.shape
    if C is not None and C.shape != (batch, M, M):
        raise ValueError(f"C must have shape {(batch, M, M)}, got {tuple(C.shape)}")
    out = torch.empty(batch, M, M, dtype=X.dtype, device=X.device)
    c_in = C if C is not None else out
    tiles = triton.cdiv(M, block_m)
    _gram_kernel[(tiles, tiles, batch)](
        X, c_in, out, M, K,
        X.stride(0), X.stride(1), X.stride(2),
        c_in.stride(0), c_in.stride(1), c_in.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        float(alpha), float(beta),
        HAS_C=C is not None, BLOCK_M=block_m, BLOCK_K=block_k,
    )
    return out
