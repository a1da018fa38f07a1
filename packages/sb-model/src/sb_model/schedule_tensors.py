"""Routing schedule tensors: :class:`RoutingSchedule` carries a step's values into the (compiled) bank.

The step -> value functions live in the trainer (``sb_train.schedules``); it writes their results into the
*same* :class:`RoutingSchedule` tensors each step (:meth:`RoutingSchedule.set_`), so a compiled model sees new
values, not new constants, and never recompiles. The per-layer multipliers (:func:`layer_multipliers`) are
fixed at construction (docs/design/model.md, per-layer boosts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def active_expert_mask(count: int, num_experts: int, device: torch.device | None = None) -> Tensor:
    """The first ``count`` experts are active."""
    return torch.arange(num_experts, device=device) < count


def scaled_active_count(count: int, counts_out_of: int, num_experts: int) -> int:
    """The active experts of a router with ``num_experts`` when a schedule turns on ``count`` of
    ``counts_out_of``: the same fraction, rounded up (docs/design/model.md, per-layer MoE baseline)."""
    return -(-count * num_experts // counts_out_of)


def layer_boost_shape(
    layer_idx: int, num_layers: int, shape: str = "peak", peak_frac: float = 0.475
) -> float:
    """Per-layer shape in [0, 1]: 'peak', 'valley', 'linear_start' or 'linear_end' (docs/design/model.md,
    per-layer boosts)."""
    f = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    den = peak_frac if f <= peak_frac else max(1.0 - peak_frac, 1e-6)
    peak = max(0.0, 1.0 - abs(f - peak_frac) / den) if den > 0 else 0.0
    if shape == "peak":
        return peak
    if shape == "valley":
        return 1.0 - peak
    if shape == "linear_start":
        return min(max(1.0 - f, 0.0), 1.0)
    if shape == "linear_end":
        return min(max(f, 0.0), 1.0)
    raise ValueError(f"shape must be 'peak', 'valley', 'linear_start' or 'linear_end' (got {shape!r})")


def layer_multipliers(num_layers: int, boost: float, shape: str = "peak", peak_frac: float = 0.475) -> Tensor:
    """(L,) float32: 1 + boost · shape(layer) (the reference's temp_mult and lb_mult with decay_scale 1)."""
    return torch.tensor(
        [1.0 + boost * layer_boost_shape(i, num_layers, shape, peak_frac) for i in range(num_layers)],
        dtype=torch.float32,
    )


TENSOR_FIELDS: tuple[str, ...] = (
    "temperature",
    "logit_cap",
    "gumbel",
    "active_mask",
    "temp_mult",
    "lb_mult",
    "router_frozen",
    "adapters_frozen",
)  # the fields of RoutingSchedule that are tensors (a model holds each as a buffer)


@dataclass
class RoutingSchedule:
    """Schedule values for one forward, all tensors (changing them never recompiles a compiled bank)."""

    temperature: Tensor  # () float32, the step's base temperature
    logit_cap: Tensor  # () float32, <= 0 means no cap
    gumbel: Tensor  # () float32, 1.0 adds Gumbel noise to the logits (training mode only)
    active_mask: Tensor  # (E,) bool
    temp_mult: Tensor  # (L,) float32 per-layer temperature multiplier
    lb_mult: Tensor  # (L,) float32 per-layer multiplier of the CV² load-balance term
    router_frozen: Tensor  # () bool: detach the router logits and drop the aux loss
    adapters_frozen: Tensor  # () bool: detach the adapters
    # the expert count that active-expert counts are out of (a plain int, not a tensor); 0: the mask's size.
    # A per-layer MoE with fewer experts per router than the bank it is compared with sets the bank's E.
    counts_out_of: int = 0

    @classmethod
    def create(
        cls,
        num_layers: int,
        num_experts: int,
        *,
        temperature: float = 1.0,
        logit_cap: float = 0.0,
        gumbel: bool = False,
        active_experts: int | None = None,
        temp_mult: Tensor | None = None,
        lb_mult: Tensor | None = None,
        router_frozen: bool = False,
        adapters_frozen: bool = False,
        counts_out_of: int = 0,
        device: torch.device | str | None = None,
    ) -> RoutingSchedule:
        of = counts_out_of or num_experts
        count = of if active_experts is None else active_experts
        if not 1 <= count <= of:
            raise ValueError(f"active_experts must be in [1, {of}] (got {count})")
        ones = torch.ones(num_layers, dtype=torch.float32, device=device)
        for name, value in (("temp_mult", temp_mult), ("lb_mult", lb_mult)):
            if value is not None and tuple(value.shape) != (num_layers,):
                raise ValueError(f"{name} must have shape ({num_layers},), got {tuple(value.shape)}")
        return cls(
            temperature=torch.tensor(float(temperature), device=device),
            logit_cap=torch.tensor(float(logit_cap), device=device),
            gumbel=torch.tensor(float(gumbel), device=device),
            active_mask=active_expert_mask(scaled_active_count(count, of, num_experts), num_experts, device),
            temp_mult=ones.clone() if temp_mult is None else temp_mult.to(device=device, dtype=torch.float32),
            lb_mult=ones.clone() if lb_mult is None else lb_mult.to(device=device, dtype=torch.float32),
            router_frozen=torch.tensor(bool(router_frozen), device=device),
            adapters_frozen=torch.tensor(bool(adapters_frozen), device=device),
            counts_out_of=counts_out_of,
        )

    @torch.no_grad()
    def set_(
        self,
        *,
        temperature: float | None = None,
        logit_cap: float | None = None,
        gumbel: bool | None = None,
        active_experts: int | None = None,
        router_frozen: bool | None = None,
        adapters_frozen: bool | None = None,
    ) -> RoutingSchedule:
        """Update values in place (host -> device copies only; no sync, no new tensors)."""
        if temperature is not None:
            self.temperature.fill_(float(temperature))
        if logit_cap is not None:
            self.logit_cap.fill_(float(logit_cap))
        if gumbel is not None:
            self.gumbel.fill_(float(gumbel))
        if active_experts is not None:
            E = self.active_mask.numel()
            of = self.counts_out_of or E
            if not 1 <= active_experts <= of:
                raise ValueError(f"active_experts must be in [1, {of}] (got {active_experts})")
            self.active_mask.copy_(active_expert_mask(scaled_active_count(active_experts, of, E), E))
        if router_frozen is not None:
            self.router_frozen.fill_(bool(router_frozen))
        if adapters_frozen is not None:
            self.adapters_frozen.fill_(bool(adapters_frozen))
        return self
