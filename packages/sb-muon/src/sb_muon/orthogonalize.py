"""Approximate polar factor (orthogonalization) of a batch of matrices by Newton–Schulz.

For G = U Σ Vᵀ the polar factor is U Vᵀ: G with every non-zero singular value set to 1. Muon
replaces its momentum matrix by this factor. Newton–Schulz approximates it with matrix
products only:

1. work in the wide orientation (rows <= cols), so X Xᵀ is the small Gram matrix;
2. scale X so that its largest singular value is at most 1 (divide by the Frobenius norm,
   an upper bound of σ_max);
3. apply the odd quintic X <- a X + (b A + c A²) X with A = X Xᵀ, one (a, b, c) triple per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .coefficients import (
    POLAR_EXPRESS,
    POLAR_EXPRESS_SAFETY,
    QUINTIC,
    TUNED5,
    Triple,
    schedule_for,
    turbo_triple,
)
from .hardware import compute_choice

#: Named methods accepted by :func:`orthogonalize`.
METHODS = ("tuned5", "polar_express", "quintic", "turbo", "eigh", "svd")
#: The default method: the most accurate of the equal-cost (5-step) schedules, measured by the
#: relative Frobenius error against the exact polar factor (see the package README).
DEFAULT_METHOD = "tuned5"

_NAMED_SCHEDULES: dict[str, Triple | tuple[Triple, ...]] = {
    "quintic": QUINTIC,
    "tuned5": TUNED5,
    "polar_express": POLAR_EXPRESS,
}
# Accepted spellings of other libraries for the same schedules.
_ALIASES = {"keller": "quintic", "polar-express": "polar_express", "you": "tuned5", "exact": "svd"}

Method = str | Sequence[Triple]


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype whose matrix products `device` runs fastest: bf16 on CUDA and on CPUs with native
    bf16 matrix units, fp32 elsewhere; decided once per process (see :mod:`sb_muon.hardware`).

    At 5 steps the error is set by the schedule more than by the dtype, so the faster dtype wins.
    """
    return compute_choice(device).dtype


def resolve_method(method: Method) -> Method:
    """Canonical method name (aliases resolved) or the coefficient list itself; validates."""
    if isinstance(method, str):
        name = _ALIASES.get(method, method)
        if name not in METHODS:
            raise ValueError(f"unknown orthogonalization method {method!r}; choose one of {METHODS} "
                             "or pass a sequence of (a, b, c) triples")
        return name
    schedule_for(1, method)  # validates the shape of a custom schedule
    return method


def _as_batch(X: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """View (..., m, n) as (B, m, n) so that batched products work for any number of leading dims."""
    lead = X.shape[:-2]
    return X.reshape(-1, X.size(-2), X.size(-1)), lead


def _normalize(X: torch.Tensor, safety: float, eps: float) -> torch.Tensor:
    """Scale each matrix so its Frobenius norm is 1/safety (hence σ_max <= 1).

    The matrix is first divided by its largest |entry| so that the sum of squares can neither
    overflow (entries near 1e30) nor underflow (entries near 1e-30); an all-zero matrix stays zero.
    """
    amax = X.abs().amax(dim=(-2, -1), keepdim=True)
    X = X / amax.clamp_min(torch.finfo(X.dtype).tiny)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X / (norm * safety + eps)


def _column_rms_precondition(X: torch.Tensor) -> torch.Tensor:
    """TurboMuon's preconditioner: divide each column by its RMS over the rows (floor 1e-6)."""
    rms = X.pow(2).mean(dim=-2, keepdim=True).sqrt()
    return X / rms.clamp_min(1e-6)


def _sigma_max_normalize(U: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Divide each matrix by an estimate of its largest singular value (one power iteration, in fp32).

    The start vector is the constant vector when `generator` is None (the result depends on nothing but
    the input), else a Gaussian vector drawn from `generator` (the reference's start; see
    docs/design/optimizer.md, TurboMuon). The estimate is computed in fp32 whatever U's dtype (it costs
    matrix-vector products only); the result is fp32.
    """
    U = U.float()
    n = U.size(-1)
    if generator is None:
        v = torch.full((*U.shape[:-2], n, 1), n ** -0.5, dtype=U.dtype, device=U.device)
    else:
        v = torch.randn((*U.shape[:-2], n, 1), generator=generator, dtype=U.dtype, device=U.device)
        v = v / (torch.linalg.vector_norm(v, dim=(-2, -1), keepdim=True) + 1e-8)
    u = U @ v
    u = u / (torch.linalg.vector_norm(u, dim=(-2, -1), keepdim=True) + 1e-8)
    v = U.mT @ u
    v = v / (torch.linalg.vector_norm(v, dim=(-2, -1), keepdim=True) + 1e-8)
    sigma = torch.linalg.vector_norm(U @ v, dim=(-2, -1), keepdim=True) + 1e-8
    return U / (sigma + 1e-8)


def newton_schulz_step(
    X: torch.Tensor, a: float, b: float, c: float, use_triton: bool = False
) -> torch.Tensor:
    """One quintic step X <- a X + (b A + c A²) X, A = X Xᵀ, for X of shape (B, m, n), m <= n."""
    if use_triton:
        from .triton_gram import gram

        A = gram(X)  # X Xᵀ, computing only one triangle of tiles
        B = gram(A, alpha=c, beta=b, C=A)  # c A Aᵀ + b A, and A Aᵀ = A² because A is symmetric
    else:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    return torch.baddbmm(X, B, X, beta=a, alpha=1.0)


def _polar_via_gram_eigh(X: torch.Tensor, rel_floor: float = 1e-6) -> torch.Tensor:
    """Polar factor (X Xᵀ)^(-1/2) X from the eigendecomposition of the Gram matrix, X wide.

    Eigenvalues below rel_floor · λ_max (singular values below 1e-3 · σ_max by default) are
    raised to that floor, so directions that are mostly rounding noise are damped instead of
    blown up to unit length. Exact otherwise, and on CPUs much cheaper than 5 Newton–Schulz
    steps for rectangular matrices (2 products of m²n plus an m x m eigh, against 20 m²n + 10 m³).
    """
    X = X / X.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    eigvals, Q = torch.linalg.eigh(X @ X.mT)
    floor = (eigvals[..., -1:] * rel_floor).clamp_min(torch.finfo(X.dtype).tiny)
    inv_sqrt = eigvals.clamp_min(floor).rsqrt()
    return (Q * inv_sqrt.unsqueeze(-2)) @ (Q.mT @ X)


def _newton_schulz(X: torch.Tensor, steps: int, method: Method, eps: float, use_triton: bool) -> torch.Tensor:
    """Normalize the wide batch X (B, m, n), m <= n, then run the method's Newton–Schulz schedule."""
    safety = 1.0
    if method == "turbo":
        X = _column_rms_precondition(X)
        schedule = schedule_for(steps, turbo_triple(X.size(-2), X.size(-1)))
    elif isinstance(method, str):
        schedule = schedule_for(steps, _NAMED_SCHEDULES[method])
        if method == "polar_express":
            safety = POLAR_EXPRESS_SAFETY
    else:
        schedule = schedule_for(steps, method)
    X = _normalize(X, safety, eps)
    for a, b, c in schedule:
        X = newton_schulz_step(X, a, b, c, use_triton=use_triton)
    return X


def polar_factor(G: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Exact polar factor U Vᵀ from an SVD (computed in `dtype`, returned in G's dtype).

    The reference that the Newton–Schulz methods are measured against; slow, but exact.
    """
    U, _, Vh = torch.linalg.svd(G.to(dtype), full_matrices=False)
    return (U @ Vh).to(G.dtype)


def orthogonalize(
    G: torch.Tensor,
    steps: int = 5,
    method: Method = DEFAULT_METHOD,
    *,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
    use_triton: bool = False,
    power_iter_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Approximate the polar factor of `G` (shape (..., rows, cols)), batched over leading dims.

    Args:
        G: a matrix or a batch of matrices; tall and wide matrices are both fine.
        steps: Newton–Schulz iterations (5 is the usual budget; "turbo" conventionally uses 4).
        method: "tuned5" (default), "polar_express", "quintic" (torch.optim.Muon's fixed triple),
            "turbo" (the reference SwitchBank TurboMuon: column-RMS preconditioning, a fixed triple
            chosen by shape, then division by an estimate of σ_max; docs/design/optimizer.md, TurboMuon),
            "svd" (exact, slow), or a custom
            sequence of (a, b, c) triples, one per iteration (the last repeats if `steps` is larger).
            "eigh" is the exact polar factor through an eigendecomposition of X Xᵀ (singular
            values below 1e-3 σ_max damped; `steps` ignored): the fastest accurate choice on CPUs.
        dtype: compute dtype; default :func:`default_compute_dtype` of G's device.
        eps: added to the Frobenius norm before dividing by it.
        use_triton: compute the two symmetric products with the Triton Gram kernel (CUDA, or the
            Triton interpreter); the plain PyTorch path is the reference it is tested against.
        power_iter_generator: "turbo" only: start the σ_max power iteration from a Gaussian vector
            drawn from this generator (on G's device) instead of the constant vector.

    Returns:
        A tensor of G's shape and dtype whose singular values lie near 1 (see the README for each
        method's measured band).
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    method = resolve_method(method)
    if method == "svd":
        return polar_factor(G)
    if G.numel() == 0:
        return torch.zeros_like(G)
    compute_dtype = dtype or default_compute_dtype(G.device)
    X, lead = _as_batch(G)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    if method == "eigh":  # an eigendecomposition needs at least fp32
        X = _polar_via_gram_eigh(X.to(torch.promote_types(compute_dtype, torch.float32)))
    else:
        X = _newton_schulz(X.to(compute_dtype), steps, method, eps, use_triton)
    if transposed:
        X = X.mT
    if method == "turbo":
        X = _sigma_max_normalize(X, power_iter_generator)
    return X.reshape(*lead, X.size(-2), X.size(-1)).to(G.dtype)
