"""Router schedules (spec 2.7 step 3, 2.8.2, 2.9) as host-side functions of the step, and the
:class:`RoutingSchedule` bundle of tensors that carries their values into the (compiled) bank.

The trainer evaluates these functions on the host each step and writes the results into the *same*
:class:`RoutingSchedule` tensors (:meth:`RoutingSchedule.set_`), so a compiled model sees new values, not new
constants, and never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def normalize_activation_schedule(
    schedule: Sequence[tuple[int, int]], num_experts: int
) -> tuple[tuple[int, int], ...]:
    """Clamp counts to [1, E] and steps to >= 0, sort by step (a later entry for the same step wins), and when
    any count < E make the schedule start at step 0 and end with all E experts (spec 2.8.2)."""
    by_step: dict[int, int] = {}
    for step, count in schedule:
        by_step[max(0, int(step))] = min(max(1, int(count)), num_experts)
    stages = sorted(by_step.items())
    if not stages:
        return ((0, num_experts),)
    if any(c < num_experts for _, c in stages):
        if stages[0][0] > 0:
            stages.insert(0, (0, stages[0][1]))
        if stages[-1][1] < num_experts:
            stages.append((stages[-1][0], num_experts))
    return tuple(stages)


def active_expert_count(step: int, schedule: Sequence[tuple[int, int]], num_experts: int) -> int:
    """Count of the last stage whose step <= ``step`` (all experts when the schedule is empty)."""
    count = num_experts
    for stage_step, stage_count in normalize_activation_schedule(schedule, num_experts):
        if stage_step <= step:
            count = stage_count
    return count


def active_expert_mask(count: int, num_experts: int, device: torch.device | None = None) -> Tensor:
    """The first ``count`` experts are active."""
    return torch.arange(num_experts, device=device) < count


def second_expert_step(schedule: Sequence[tuple[int, int]]) -> int:
    """Anchor of the temperature and cap schedules: the step at which the second stage starts. Unlike the
    reference (which reads raw entry [1]), this reads the *sorted* schedule."""
    stages = sorted((max(0, int(s)), c) for s, c in schedule)
    if len(stages) >= 2:
        return stages[1][0]
    return stages[0][0] if stages else 0


def router_temperature(
    step: int,
    num_iterations: int,
    t_init: float,
    t_final: float,
    *,
    power: float = 1.5,
    anchor_delta_steps: int = 0,
    anchor_ratio: float = 0.0,
    start_step: int = 0,
    end_step: int | None = None,
) -> float:
    """T(step) = T1 + (T0 - T1)·(1 - progress)^power after ``start_step`` (spec 2.9); with an anchor
    (Δa > 0, 0 < ρ < 1) the power makes (1 - progress)^power = ρ exactly Δa steps after the start."""
    if end_step is not None and end_step > 0:
        step = min(step, end_step)
        num_iterations = min(num_iterations, end_step)
    if step <= start_step:
        return t_init
    span = max(num_iterations - start_step, 1)
    progress = min((step - start_step) / span, 1.0)
    if anchor_delta_steps > 0 and 0.0 < anchor_ratio < 1.0:
        pa = min(max(anchor_delta_steps / span, 1e-6), 0.999999)
        power = math.log(anchor_ratio) / math.log(1.0 - pa)
    return t_final + (t_init - t_final) * (1.0 - progress) ** power


def router_logit_cap(
    step: int, cap_init: float, cap_final: float, *, delta_steps: int, start_step: int
) -> float:
    """Cap schedule of spec 2.9 (quartic-in-log ramp from c0 to c1 over ``delta_steps``); 0.0 means no cap."""
    if delta_steps <= 0:
        return max(cap_final, 0.0)
    if step < start_step:
        return max(cap_init, 0.0)
    frac = min(max((step - start_step) / delta_steps, 0.0), 1.0)
    if cap_init <= 0 and cap_final <= 0:
        return 0.0
    if cap_init <= 0:
        return cap_final
    if cap_final <= 0:
        return cap_init * (1.0 - frac)
    return cap_init * math.exp(math.log(cap_final / cap_init) * frac**4)


def gumbel_active(
    step: int, windows: Sequence[tuple[int, int]], num_iterations: int, enabled: bool = True
) -> bool:
    """Half-open windows [start, end); end < 0 means until ``num_iterations``."""
    if not enabled:
        return False
    return any(start <= step < (num_iterations if end < 0 else end) for start, end in windows)


def layer_boost_shape(
    layer_idx: int, num_layers: int, shape: str = "peak", peak_frac: float = 0.475
) -> float:
    """Per-layer shape in [0, 1] of spec 2.7 step 3 ('peak', 'valley', 'linear_start', 'linear_end')."""
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
        device: torch.device | str | None = None,
    ) -> RoutingSchedule:
        count = num_experts if active_experts is None else active_experts
        if not 1 <= count <= num_experts:
            raise ValueError(f"active_experts must be in [1, {num_experts}] (got {count})")
        ones = torch.ones(num_layers, dtype=torch.float32, device=device)
        for name, value in (("temp_mult", temp_mult), ("lb_mult", lb_mult)):
            if value is not None and tuple(value.shape) != (num_layers,):
                raise ValueError(f"{name} must have shape ({num_layers},), got {tuple(value.shape)}")
        return cls(
            temperature=torch.tensor(float(temperature), device=device),
            logit_cap=torch.tensor(float(logit_cap), device=device),
            gumbel=torch.tensor(float(gumbel), device=device),
            active_mask=active_expert_mask(count, num_experts, device),
            temp_mult=ones.clone() if temp_mult is None else temp_mult.to(device=device, dtype=torch.float32),
            lb_mult=ones.clone() if lb_mult is None else lb_mult.to(device=device, dtype=torch.float32),
            router_frozen=torch.tensor(bool(router_frozen), device=device),
            adapters_frozen=torch.tensor(bool(adapters_frozen), device=device),
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
            if not 1 <= active_experts <= E:
                raise ValueError(f"active_experts must be in [1, {E}] (got {active_experts})")
            self.active_mask.copy_(active_expert_mask(active_experts, E))
        if router_frozen is not None:
            self.router_frozen.fill_(bool(router_frozen))
        if adapters_frozen is not None:
            self.adapters_frozen.fill_(bool(adapters_frozen))
        return self
