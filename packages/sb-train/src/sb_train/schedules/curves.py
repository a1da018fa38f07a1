"""Step -> value functions of every SwitchBank schedule: LR, rampdowns, momentum, window, router curves.

Each function is pure host-side arithmetic on Python numbers; :mod:`sb_train.schedules.schedule_config`
composes them into one bundle per step and the trainer hands the results to the model as tensors. The
formulas are those of docs/design/schedules.md (LR and rampdowns, momentum warmup, router temperature and
cap, Gumbel windows, expert activation) and docs/design/model.md (attention window).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


# ------------------------------------------------------------------------------------------ optimizer
def lr_multiplier(
    step: int, num_iterations: int, cooldown_frac: float, final_mult: float = 0.0, freeze_last_steps: int = 0
) -> float:
    """Base LR multiplier: 1.0, then a linear cooldown to ``final_mult`` over the last ``cooldown_frac`` of
    training. ``freeze_last_steps`` holds the value reached at step N - freeze_last_steps.

    It multiplies every param group's initial LR, Muon's matrix groups included
    (docs/design/deviations.md D2)."""
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1 (got {num_iterations})")
    s = min(step, num_iterations - freeze_last_steps)
    x = min(max(s / num_iterations, 0.0), 1.0)
    if x < 1.0 - cooldown_frac:
        return 1.0
    if cooldown_frac <= 0.0:  # no cooldown: x == 1 here; the reference would divide by zero
        return 1.0
    t = min(max((x - (1.0 - cooldown_frac)) / cooldown_frac, 0.0), 1.0)
    return 1.0 - t * (1.0 - final_mult)


def rampdown_multiplier(progress: float, start: float, end: float) -> float:
    """Linear LR rampdown from 1 at ``progress == start`` to 0 at ``progress == end``.

    ``end < 0`` disables it (1.0); from ``end`` on it is 0.0; ``start < 0`` or ``start >= end`` means no ramp
    (1.0 before ``end``)."""
    if end < 0:
        return 1.0
    if progress >= end:
        return 0.0
    if start < 0 or start >= end or progress <= start:
        return 1.0
    return min(max(1.0 - (progress - start) / (end - start), 0.0), 1.0)


def momentum_warmup(step: int, warmup_steps: int, start: float, final: float) -> float:
    """Muon momentum of the matrix groups: linear from ``start`` at step 0 to ``final`` at ``warmup_steps``,
    then held (``warmup_steps == 0``: ``final`` from the start)."""
    if warmup_steps <= 0:
        return final
    f = min(max(step / warmup_steps, 0.0), 1.0)
    return (1.0 - f) * start + f * final


# ------------------------------------------------------------------------------------------ attention
def attention_window_blocks(
    step: int, num_iterations: int, max_window_tokens: int = 3456, block_size: int = 128, end_step: int = 0
) -> int:
    """Long attention window in blocks at ``step``: the smallest multiple of ``block_size`` that is
    >= max_window_tokens · f(x), f(x) = 4x³ − 6x² + 3x, x = step / N, and at least one block.
    ``end_step > 0`` clamps step and N to it (the full window from that step on). The model derives the
    short window (half of it) itself."""
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1 (got {num_iterations})")
    if max_window_tokens < 1 or block_size < 1:
        raise ValueError(f"the attention window needs max_window_tokens >= 1 and block_size >= 1 (got "
                         f"{max_window_tokens}, {block_size})")
    s, n = step, num_iterations
    if end_step > 0:
        s, n = min(step, end_step), min(num_iterations, end_step)
    x = min(max(s / n, 0.0), 1.0)
    f = 4 * x**3 - 6 * x**2 + 3 * x
    tokens = math.ceil(max_window_tokens * f / block_size) * block_size
    return max(tokens // block_size, 1)


# ------------------------------------------------------------------------------------------ experts
def normalize_activation_schedule(
    schedule: Sequence[tuple[int, int]], num_experts: int
) -> tuple[tuple[int, int], ...]:
    """Sort by step (a later entry for the same step wins) and, when any count < E, make the schedule start
    at step 0 and end with all E experts. A count outside [1, E] or a negative step is refused (ValueError),
    not clamped: a schedule written for a larger bank would otherwise run a different experiment."""
    by_step: dict[int, int] = {}
    for step, count in schedule:
        if not 1 <= int(count) <= num_experts or int(step) < 0:
            raise ValueError(
                f"the expert activation schedule has ({step}, {count}): counts must be in [1, {num_experts}] "
                f"(the bank has {num_experts} experts) and steps >= 0"
            )
        by_step[int(step)] = int(count)
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
    """Experts live at ``step``: the count of the last stage that has started (all when the schedule is
    empty)."""
    count = num_experts
    for stage_step, stage_count in normalize_activation_schedule(schedule, num_experts):
        if stage_step <= step:
            count = stage_count
    return count


def second_expert_step(schedule: Sequence[tuple[int, int]]) -> int:
    """Anchor of the temperature and cap curves: the step at which the second stage of the *sorted*
    schedule starts (docs/design/deviations.md D22; the reference read the raw second entry)."""
    stages = sorted((max(0, int(s)), c) for s, c in schedule)
    if len(stages) >= 2:
        return stages[1][0]
    return stages[0][0] if stages else 0


# ------------------------------------------------------------------------------------------ router
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
    end_step: int = 0,
) -> float:
    """T(step) = T1 + (T0 - T1)·(1 - progress)^power after ``start_step``; with an anchor (Δa > 0,
    0 < ρ < 1) the power is chosen so that (1 - progress)^power = ρ exactly Δa steps after the start.
    ``end_step > 0`` clamps step and N to it (the final temperature from that step on)."""
    if end_step > 0:
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
    """Router logit cap: ``cap_init`` until ``start_step``, then a quartic-in-log ramp to ``cap_final`` over
    ``delta_steps``. A cap <= 0 means none (0.0 is returned for "no cap")."""
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
    """Whether ``step`` lies in one of the half-open windows [start, end); end < 0 means until
    ``num_iterations``."""
    if not enabled:
        return False
    return any(start <= step < (num_iterations if end < 0 else end) for start, end in windows)
