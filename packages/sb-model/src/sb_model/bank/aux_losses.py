"""Auxiliary router losses: load balance, entropy gap, Switch and z-loss, as tensor math only.

(docs/design/bank.md, aux losses.) No Python ``math`` on tensors, no NaN in the graph even where the reference
produced one: every masked branch is finite before it is discarded."""

from __future__ import annotations

import torch
from torch import Tensor

from sb_model.bank.config import BankConfig
from sb_model.bank.routing import Routing
from sb_model.schedule_tensors import RoutingSchedule

EPS = 1e-6


def cv_squared(v: Tensor) -> Tensor:
    """Squared coefficient of variation over *all* entries: Var_pop(v) / (mean(v)² + 1e-6)."""
    mean = v.mean(dim=-1)
    var = (v - mean[..., None]).square().mean(dim=-1)
    return var / (mean.square() + EPS)


def entropy(v: Tensor) -> Tensor:
    """H(v) = -Σ v ln(v + 1e-6) (nats)."""
    return -(v * torch.log(v + EPS)).sum(dim=-1)


def entropy_gap(h: Tensor, n_active: Tensor) -> Tensor:
    """|H* - H| / H* with H* = ln(n_active); 0 where n_active <= 1 (the reference's NaN case)."""
    target = torch.log(n_active.to(h.dtype).clamp(min=1.0))
    ok = target > 0
    safe = torch.where(ok, target, torch.ones_like(target))
    return torch.where(ok, (safe - h).abs() / safe, torch.zeros_like(h))


def reference_aux_loss(
    importance: Tensor,
    load: Tensor,
    n_active: Tensor,
    n_live: Tensor,
    *,
    lb_coeff: float,
    entropy_coeff: float,
    lb_mult: Tensor | float = 1.0,
) -> Tensor:
    """lb_coeff·lb_mult·(cv²(imp) + cv²(load)) + entropy_coeff·(gap(H_load) + gap(H_imp)), forced to 0 when at
    most one expert is live. ``load`` (top-1 fractions) carries no gradient, as in the reference."""
    lb = lb_coeff * lb_mult * (cv_squared(importance) + cv_squared(load))
    ent = entropy_coeff * (entropy_gap(entropy(load), n_active) + entropy_gap(entropy(importance), n_active))
    aux = lb + ent
    return torch.where(n_live > 1, aux, torch.zeros_like(aux))


def switch_load_balancing_loss(dispatch_frac: Tensor, mean_prob: Tensor) -> Tensor:
    """Switch Transformer loss E · Σ_i f_i · P_i (f: fraction of choices sent to i, P: mean router prob)."""
    E = dispatch_frac.shape[-1]
    return E * (dispatch_frac * mean_prob).sum(dim=-1)


def router_z_loss(logits: Tensor, live: Tensor) -> Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(live logits)²."""
    masked = torch.where(live[None, :], logits, torch.full_like(logits, float("-inf")))
    return torch.logsumexp(masked, dim=-1).square().mean()


def layer_aux_loss(
    config: BankConfig, r: Routing, demanded_counts: Tensor, layer_idx: int, schedule: RoutingSchedule
) -> tuple[Tensor, Tensor]:
    """(aux, z-loss) of one layer's routing: the reference's loss with the layer's load-balance multiplier,
    plus the optional Switch and z-loss terms; 0 with at most one live expert or a frozen router."""
    N, k = r.topk_idx.shape
    importance = r.probs.mean(dim=0)
    with torch.no_grad():
        ones = r.valid[:, 0].to(importance.dtype)
        top1 = torch.zeros_like(importance).scatter_add_(0, r.topk_idx[:, 0], ones) / N
    aux = reference_aux_loss(
        importance,
        top1,
        schedule.active_mask.sum(),
        r.n_live,
        lb_coeff=config.lb_coeff,
        entropy_coeff=config.entropy_coeff,
        lb_mult=schedule.lb_mult[layer_idx],
    )
    multi = r.n_live > 1
    if config.switch_lb_coeff > 0:
        frac = demanded_counts / float(N * k)
        switch = config.switch_lb_coeff * switch_load_balancing_loss(frac, importance)
        aux = aux + torch.where(multi, switch, torch.zeros_like(switch))
    z = router_z_loss(r.logits, r.live) if config.z_loss_coeff > 0 else torch.zeros((), device=aux.device)
    aux = aux + torch.where(multi, config.z_loss_coeff * z, torch.zeros_like(z))
    aux = torch.where(schedule.router_frozen, torch.zeros_like(aux), aux)
    return aux, z
