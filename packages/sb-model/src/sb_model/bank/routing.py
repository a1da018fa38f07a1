"""From router logits to routing decisions: noise, temperature, cap, live experts, gating, top-k or Sinkhorn.

(docs/design/bank.md, routing.) All schedule values are tensors; nothing branches on a tensor value, so a
compiled graph never reads one on the host."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sb_model.bank.config import BankConfig
from sb_model.schedule_tensors import RoutingSchedule


class Routing(NamedTuple):
    logits: Tensor  # (N, E) float32 after noise, temperature and cap (dead experts NOT masked)
    probs: Tensor  # (N, E) distribution over live experts (softmax probs; normalised scores for sigmoid)
    topk_idx: Tensor  # (N, k) int64
    gates: Tensor  # (N, k) gate values that scale each chosen expert's output (0 for invalid choices)
    valid: Tensor  # (N, k) bool: the choice names a live expert
    live: Tensor  # (E,) bool
    n_live: Tensor  # () int64


def live_experts(active_mask: Tensor) -> Tensor:
    """The active experts; every expert if none is active (the reference's fallback)."""
    return torch.where(active_mask.any(), active_mask, torch.ones_like(active_mask))


def gumbel_noise(shape: torch.Size | tuple[int, ...], device: torch.device) -> Tensor:
    u = torch.rand(shape, device=device, dtype=torch.float32).clamp(1e-6, 1.0 - 1e-6)
    return -torch.log(-torch.log(u))


def shape_logits(
    raw: Tensor,
    *,
    temperature: Tensor,
    logit_cap: Tensor,
    cap_mode: str = "hard",
    gumbel: Tensor | None = None,
) -> Tensor:
    """raw (N, E) float32 -> noise (scaled by the 0/1 ``gumbel`` tensor) -> / max(T, 1e-6) -> cap.

    A cap <= 0 means "no cap". ``hard`` clamps to [-cap, cap] like the reference (saturated logits get zero
    gradient); ``tanh`` is the soft cap cap·tanh(z/cap), which keeps a gradient everywhere.
    """
    z = raw.to(torch.promote_types(raw.dtype, torch.float32))
    z = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    if gumbel is not None:
        z = z + gumbel.to(z.dtype) * gumbel_noise(z.shape, z.device).to(z.dtype)
    z = z / temperature.to(z.dtype).clamp(min=1e-6)
    cap = logit_cap.to(z.dtype)
    on = cap > 0
    safe_cap = torch.where(on, cap, torch.ones_like(cap))
    if cap_mode == "hard":
        capped = torch.minimum(torch.maximum(z, -safe_cap), safe_cap)
    elif cap_mode == "tanh":
        capped = safe_cap * torch.tanh(z / safe_cap)
    else:
        raise ValueError(f"cap_mode must be 'hard' or 'tanh' (got {cap_mode!r})")
    return torch.where(on, capped, z)


def sinkhorn_plan(logits: Tensor, live: Tensor, *, tau: float = 1.0, iters: int = 8) -> Tensor:
    """Balanced assignment P (N, E): rows sum to 1, live columns sum to N / n_live, P ∝ exp(logits / tau)
    (log-domain Sinkhorn-Knopp, ending on the column step). Dead columns are 0.

    Every token's plan depends on every other token of the call, so selections made from it are NOT causal;
    the bank uses it for training-time selection only (see the README)."""
    N = logits.shape[0]
    neg_inf = torch.full_like(logits, float("-inf"))
    log_k = torch.where(live[None, :], logits / tau, neg_inf)
    n_live = live.sum().to(logits.dtype)
    log_col = torch.log(N / n_live)
    log_v = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
    log_u = torch.zeros(N, dtype=logits.dtype, device=logits.device)
    for _ in range(iters):
        log_u = -torch.logsumexp(log_k + log_v[None, :], dim=1)
        col = torch.logsumexp(log_k + log_u[:, None], dim=0)
        log_v = torch.where(live, log_col - col, torch.zeros_like(col))
    return torch.exp(log_k + log_u[:, None] + log_v[None, :])


def route(
    logits: Tensor,
    live: Tensor,
    k: int,
    *,
    gating: str = "softmax",
    selection: Tensor | None = None,
    normalize_gates: bool = False,
) -> Routing:
    """Hard top-k over live experts. Gate = the chosen expert's softmax probability (or sigmoid score); with a
    single live expert the choice is that expert with gate exactly 1 (the deterministic path), and choices
    beyond the number of live experts are marked invalid (gate 0, never computed).

    ``selection`` (N, E), if given, replaces the scores used to *pick* experts (Sinkhorn); gate values still
    come from the router's own probabilities."""
    neg_inf = torch.full_like(logits, float("-inf"))
    masked = torch.where(live[None, :], logits, neg_inf)
    if gating == "softmax":
        probs = torch.softmax(masked, dim=-1)
        scores = probs
    elif gating == "sigmoid":
        scores = torch.sigmoid(logits) * live[None, :].to(logits.dtype)
        probs = scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-9)
    else:
        raise ValueError(f"gating must be 'softmax' or 'sigmoid' (got {gating!r})")
    pick_from = masked if selection is None else torch.where(live[None, :], selection, neg_inf)
    topk_idx = torch.topk(pick_from, k, dim=-1).indices
    valid = live[topk_idx]
    gates = torch.where(valid, scores.gather(1, topk_idx), torch.zeros_like(logits[:, :k]))
    if normalize_gates:
        gates = gates / gates.sum(dim=-1, keepdim=True).clamp(min=1e-9)
    n_live = live.sum()
    single = n_live == 1
    gates = torch.where(single, valid.to(gates.dtype), gates)
    return Routing(logits, probs, topk_idx, gates, valid, live, n_live)


def decide(
    raw: Tensor, config: BankConfig, schedule: RoutingSchedule, layer_idx: int, *, training: bool
) -> Routing:
    """Layer ``layer_idx``'s routing of raw router logits (N, E) under this step's schedule: shaped logits
    (noise in training only, the layer's temperature, the cap), frozen-router detach, then top-k over the live
    experts (picked by a Sinkhorn plan when ``assignment="sinkhorn"`` and training)."""
    live = live_experts(schedule.active_mask)
    logits = shape_logits(
        raw,
        temperature=schedule.temperature * schedule.temp_mult[layer_idx],
        logit_cap=schedule.logit_cap,
        cap_mode=config.logit_cap_mode,
        gumbel=schedule.gumbel if training else None,
    )
    logits = torch.where(schedule.router_frozen, logits.detach(), logits)
    selection = None
    if config.assignment == "sinkhorn" and training:
        selection = sinkhorn_plan(logits.detach(), live, tau=config.sinkhorn_tau, iters=config.sinkhorn_iters)
    return route(
        logits,
        live,
        config.topk,
        gating=config.gating,
        selection=selection,
        normalize_gates=config.normalize_gates,
    )
