"""Routing metrics, accumulated on the device and read with one host copy per logging step.

Every bank call adds one row of per-layer statistics into device buffers (no sync). :meth:`RouterMetrics.read`
copies the buffers to the host once and returns per-layer values (averaged over the calls since the last
reset) and the step summary under the reference's and the router-metrics guide's names. The glossary is in the
package README.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sb_model.bank.aux_losses import cv_squared, entropy

# Per-call scalar slots, in buffer order.
SCALAR_KEYS: tuple[str, ...] = (
    "imp_cv2",
    "load_cv2",
    "usage_frac",
    "topk_prob_mean",
    "top1_p_mean",
    "imp_entropy",
    "load_entropy",
    "entropy_mean",
    "max_logit",
    "max_frac",
    "num_active",
    "live_experts",
    "drop_frac",
    "aux",
    "z_loss",
)
_MAX_LOGIT_COUNT = len(SCALAR_KEYS)  # extra slot: calls with a finite max_logit (> 1 live expert)
VECTOR_KEYS: tuple[str, ...] = ("importance", "load", "frac_dem", "frac_srv")


def call_statistics(
    *,
    probs: Tensor,
    logits: Tensor,
    topk_idx: Tensor,
    valid: Tensor,
    live: Tensor,
    n_live: Tensor,
    demanded_counts: Tensor,
    served_counts: Tensor,
    aux: Tensor,
    z_loss: Tensor,
) -> tuple[Tensor, Tensor]:
    """One call's statistics as (scalars (S+1,), vectors (4, E)) float32 tensors (no grad, no sync)."""
    with torch.no_grad():
        probs = probs.float()
        N, E = probs.shape
        importance = probs.mean(dim=0)
        top1 = torch.zeros(E, device=probs.device).scatter_add_(0, topk_idx[:, 0], valid[:, 0].float()) / max(
            N, 1
        )
        total_choices = float(N * topk_idx.shape[1])
        frac_dem = demanded_counts / total_choices
        frac_srv = served_counts / total_choices
        token_entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(dim=-1)
        multi = n_live > 1
        max_logit = torch.where(
            multi, torch.where(live[None, :], logits, torch.full_like(logits, -torch.inf)).max(), 0.0
        )
        demanded = demanded_counts.sum()
        drop = torch.where(demanded > 0, 1.0 - served_counts.sum() / demanded.clamp(min=1.0), 0.0)
        scalars = torch.stack(
            [
                cv_squared(importance),
                cv_squared(top1),
                (top1 > 0).float().mean(),
                (probs.gather(1, topk_idx) * valid).sum() / valid.sum().clamp(min=1),
                probs.gather(1, topk_idx[:, :1]).mean(),
                entropy(importance),
                entropy(top1),
                token_entropy.mean(),
                max_logit.float(),
                frac_dem.max(),
                (served_counts > 0).float().sum(),
                n_live.float(),
                drop.float(),
                aux.detach().float(),
                z_loss.detach().float(),
                multi.float(),
            ]
        )
        vectors = torch.stack([importance, top1, frac_dem, frac_srv])
    return scalars, vectors


@dataclass
class RoutingReport:
    """What :meth:`RouterMetrics.read` returns (all host values)."""

    per_layer: list[dict[str, float]]
    summary: dict[str, float]
    vectors: dict[str, list[list[float]]] = field(default_factory=dict)  # key -> [layer][expert]
    calls: list[int] = field(default_factory=list)


class RouterMetrics(nn.Module):
    """Device-side accumulator of per-layer routing statistics (non-persistent buffers)."""

    def __init__(self, num_layers: int, num_experts: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.register_buffer("scalar_sums", torch.zeros(num_layers, len(SCALAR_KEYS) + 1), persistent=False)
        self.register_buffer(
            "vector_sums", torch.zeros(num_layers, len(VECTOR_KEYS), num_experts), persistent=False
        )
        self.register_buffer("calls", torch.zeros(num_layers), persistent=False)

    @torch.no_grad()
    def record(self, layer_idx: int, scalars: Tensor, vectors: Tensor) -> None:
        self.scalar_sums[layer_idx] += scalars
        self.vector_sums[layer_idx] += vectors
        self.calls[layer_idx] += 1

    @torch.no_grad()
    def max_logit_totals(self) -> Tensor:
        """(L, 2) device copy of the running per-layer max-logit sum and the number of calls that had a finite
        max logit (more than one live expert). The difference of two snapshots gives an interval's mean per
        layer without a host sync (the trainer's per-step logit statistics)."""
        s = self.scalar_sums
        return torch.stack([s[:, SCALAR_KEYS.index("max_logit")], s[:, _MAX_LOGIT_COUNT]], dim=1).clone()

    @torch.no_grad()
    def reset(self) -> None:
        self.scalar_sums.zero_()
        self.vector_sums.zero_()
        self.calls.zero_()

    @torch.no_grad()
    def read(
        self,
        router_weight: Tensor | None = None,
        feature_slices: dict[str, tuple[int, int]] | None = None,
        *,
        reset: bool = True,
    ) -> RoutingReport:
        """Average over the calls since the last reset, with one device-to-host copy. Layers without calls are
        left out. ``router_weight`` (L, E, in) and ``feature_slices`` add the ``feat_w_*`` means."""
        L, E = self.num_layers, self.num_experts
        parts = [self.scalar_sums.flatten(), self.vector_sums.flatten(), self.calls]
        if router_weight is not None and feature_slices is not None:
            w = router_weight.detach().float().abs()
            parts.append(
                torch.stack([w[:, :, a:b].mean(dim=(1, 2)) for a, b in feature_slices.values()], 1).flatten()
            )
        host = torch.cat([p.float() for p in parts]).cpu()
        S = len(SCALAR_KEYS) + 1
        at = 0
        scal = host[at : at + L * S].view(L, S)
        at += L * S
        vec = host[at : at + L * len(VECTOR_KEYS) * E].view(L, len(VECTOR_KEYS), E)
        at += L * len(VECTOR_KEYS) * E
        calls = host[at : at + L]
        at += L
        feat = None
        if router_weight is not None and feature_slices is not None:
            feat = host[at:].view(L, len(feature_slices))
        if reset:
            self.reset()

        per_layer: list[dict[str, float]] = []
        vectors: dict[str, list[list[float]]] = {k: [] for k in VECTOR_KEYS}
        layers: list[int] = []
        for layer in range(L):
            n = float(calls[layer])
            if n == 0:
                continue
            layers.append(layer)
            row = {key: float(scal[layer, i]) / n for i, key in enumerate(SCALAR_KEYS)}
            finite_calls = float(scal[layer, _MAX_LOGIT_COUNT])
            row["max_logit"] = (
                float(scal[layer, SCALAR_KEYS.index("max_logit")]) / finite_calls
                if finite_calls
                else float("nan")
            )
            row["layer"] = float(layer)
            if feat is not None:
                for j, name in enumerate(feature_slices or {}):
                    row[f"feat_w_{name}"] = float(feat[layer, j])
            per_layer.append(row)
            for i, key in enumerate(VECTOR_KEYS):
                vectors[key].append([float(v) / n for v in vec[layer, i]])
        return RoutingReport(
            per_layer, summarize(per_layer, vectors), vectors, [int(calls[i]) for i in layers]
        )


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def summarize(per_layer: list[dict[str, float]], vectors: dict[str, list[list[float]]]) -> dict[str, float]:
    """Step summary over layers, keyed ``router/<name>`` (see the README glossary)."""
    if not per_layer:
        return {}
    out: dict[str, float] = {}
    for key in (
        "imp_cv2",
        "load_cv2",
        "usage_frac",
        "topk_prob_mean",
        "imp_entropy",
        "load_entropy",
        "max_logit",
    ):
        out[f"router/{key}"] = _mean([r[key] for r in per_layer])
    out["router/top1_p_mean"] = _mean([r["top1_p_mean"] for r in per_layer])
    out["router/entropy_mean"] = _mean([r["entropy_mean"] for r in per_layer])
    out["router/max_frac_mean"] = _mean([r["max_frac"] for r in per_layer])
    out["router/max_frac_max"] = max(r["max_frac"] for r in per_layer)
    out["router/active_min"] = min(r["num_active"] for r in per_layer)
    out["router/active_mean"] = _mean([r["num_active"] for r in per_layer])
    out["router/drop_frac_mean"] = _mean([r["drop_frac"] for r in per_layer])
    out["router/aux_mean"] = _mean([r["aux"] for r in per_layer])
    out["router/z_loss_mean"] = _mean([r["z_loss"] for r in per_layer])
    live = min(r["live_experts"] for r in per_layer)
    out["router/live_experts"] = live
    n_layers = len(per_layer)
    E = len(vectors["frac_srv"][0])
    srv = [sum(vectors["frac_srv"][li][e] for li in range(n_layers)) / n_layers for e in range(E)]
    dem = [sum(vectors["frac_dem"][li][e] for li in range(n_layers)) / n_layers for e in range(E)]
    usage = [sum(vectors["load"][li][e] for li in range(n_layers)) / n_layers for e in range(E)]
    for e in range(E):
        out[f"router/frac_srv_e{e}"] = srv[e]
        out[f"router/frac_dem_e{e}"] = dem[e]
        out[f"router_expert/e{e}"] = usage[e]
    out["router/frac_srv_max"] = max(srv)
    out["router/frac_dem_max"] = max(dem)
    out["router_expert/min_usage"] = min(usage)
    out["router_expert/max_usage"] = max(usage)
    out["router_expert/mean_usage"] = sum(usage) / E
    return out
