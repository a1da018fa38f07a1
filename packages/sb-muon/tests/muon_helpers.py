"""Matrix helpers shared by the sb-muon tests."""

import torch


def band(G: torch.Tensor, O: torch.Tensor, tau: float) -> tuple[float, float]:
    """Singular values of O restricted to the singular subspace of G where σ/σ_max >= tau."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    k = int((S / S[0] >= tau).sum())
    proj = U[:, :k].T @ O.double() @ Vh[:k].T
    sv = torch.linalg.svdvals(proj)
    return float(sv.min()), float(sv.max())


def ill_conditioned(m: int, n: int, decades: float = 4.0) -> torch.Tensor:
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k))
    V, _ = torch.linalg.qr(torch.randn(n, k))
    return U @ torch.diag(torch.logspace(0, -decades, k)) @ V.T


def low_rank(m: int, n: int, rank: int = 8, noise: float = 1e-3) -> torch.Tensor:
    return torch.randn(m, rank) @ torch.randn(rank, n) + noise * torch.randn(m, n)
