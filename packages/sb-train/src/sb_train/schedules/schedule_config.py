"""The schedule section of a run's configuration and the bundle of every schedule value at one step.

:class:`ScheduleConfig` holds the schedule fields with the record preset's values (docs/design/presets.md);
:meth:`ScheduleConfig.at` turns a step into a :class:`StepValues`: LR multipliers per param group, Muon
momentum, attention window, router temperature, logit cap, Gumbel switch, live experts, freezes and head
untying. The curves themselves are in :mod:`sb_train.schedules.curves`.

Where we differ from the reference on purpose (docs/design/schedules.md):

* The LR multiplier applies to **every** param group, Muon's matrix groups included (the reference froze the
  matrix LR, so cooldown and FFN rampdown never reached the matrices: docs/design/deviations.md D2).
* The temperature/cap anchor is the second stage of the *sorted* expert activation schedule
  (docs/design/deviations.md D22).
* ``at(..., evaluation=True)`` turns Gumbel noise off unless ``gumbel_in_eval`` (docs/design/deviations.md
  D6); every other value is the one of that step, so validation stays comparable to the reference.
* ``lr_multiplier`` with ``cooldown_frac=0`` returns 1.0 up to the end (the reference divides by zero at N).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from sb_train.param_groups import ADAPTER, ROUTER, SHARED_FFN
from sb_train.schedules import curves

__all__ = [
    "RECORD_EXPERT_ACTIVATION_SCHEDULE",
    "RECORD_GUMBEL_SCHEDULE",
    "ScheduleConfig",
    "StepValues",
]

#: (step, active expert count) stages of the record preset.
RECORD_EXPERT_ACTIVATION_SCHEDULE: tuple[tuple[int, int], ...] = (
    (0, 1), (75, 2), (141, 3), (234, 4), (338, 5), (441, 6), (591, 7), (695, 8),
)
#: Half-open [start, end) Gumbel windows of the record preset.
RECORD_GUMBEL_SCHEDULE: tuple[tuple[int, int], ...] = (
    (75, 441), (459, 488), (534, 722), (900, 909), (1004, 1022), (1097, 1107), (1200, 1209), (1284, 1313),
    (1472, 1500),
)


@dataclass(frozen=True)
class StepValues:
    """Every schedule value of one step (see :meth:`ScheduleConfig.at`)."""

    step: int
    lr_mult: float  # base LR multiplier, applied to every group (Muon groups included)
    group_mult: dict[str, float]  # extra multipliers: "router", "adapter", "shared_ffn"; other groups 1.0
    momentum: float  # Muon momentum of the matrix groups (with warmup)
    window_blocks: int  # long attention window in blocks (short = // 2, the model's job)
    temperature: float  # base router temperature
    logit_cap: float  # router logit cap; 0.0 means no cap
    gumbel: bool  # add Gumbel noise to the router logits
    active_experts: int  # experts enabled by the activation schedule
    router_frozen: bool  # progress >= router_freeze_frac: router logits detached, no aux loss
    adapters_frozen: bool  # router_frozen and router_freeze_adapters
    ffn_frozen: bool  # progress >= shared_ffn_freeze_frac: the block stack gets no gradient
    head_untied: bool  # untie_lm_head_frac >= 0 and step >= int(frac * N): a separate LM head

    def lr_for(self, group_name: str) -> float:
        """Multiplier of a param group's initial LR: ``lr_mult * group_mult.get(group_name, 1.0)``."""
        return self.lr_mult * self.group_mult.get(group_name, 1.0)


@functools.lru_cache(maxsize=64)
def _normalized_activation(
    schedule: tuple[tuple[int, int], ...], num_experts: int
) -> tuple[tuple[int, int], ...]:
    return curves.normalize_activation_schedule(schedule, num_experts)


@functools.lru_cache(maxsize=64)
def _anchor_step(schedule: tuple[tuple[int, int], ...]) -> int:
    return curves.second_expert_step(schedule)


@dataclass(frozen=True)
class ScheduleConfig:
    """Schedule fields with the record preset's values (docs/design/presets.md). All fields are int, float,
    bool or tuples of (int, int) pairs; ints are accepted for float fields and lists for tuples (they are
    converted). Invalid values raise ValueError naming the field and the allowed range."""

    num_iterations: int = 1750
    cooldown_frac: float = 0.65
    lr_final_mult: float = 0.0
    lr_freeze_last_steps: int = 0
    muon_momentum: float = 0.95
    momentum_warmup_start: float = 0.85
    momentum_warmup_steps: int = 300
    window_schedule_end_step: int = 0  # > 0: the window reaches its maximum at this step (HEAD)
    expert_activation_schedule: tuple[tuple[int, int], ...] = RECORD_EXPERT_ACTIVATION_SCHEDULE
    router_temp_init: float = 1.464
    router_temp_final: float = 0.93744
    router_temp_power: float = 1.5  # used only when the anchor is off
    router_temp_anchor_delta_steps: int = 284
    router_temp_anchor_ratio: float = 0.49  # 0 disables the anchor
    router_temp_schedule_end_step: int = 0  # > 0: the temperature reaches its final value here (HEAD)
    router_logit_cap_initial: float = 1.166  # <= 0: no cap before the ramp
    router_logit_cap_final: float = 13.757  # <= 0: ramp down to no cap
    router_logit_cap_delta_steps: int = 237  # <= 0: the final cap from step 0
    router_use_gumbel: bool = True
    router_gumbel_schedule: tuple[tuple[int, int], ...] = RECORD_GUMBEL_SCHEDULE
    gumbel_in_eval: bool = False
    router_freeze_frac: float = 1.0
    router_freeze_adapters: bool = False
    router_lr_reduce_start_frac: float = -1.0
    shared_ffn_freeze_frac: float = 1.0
    shared_ffn_lr_reduce_start_frac: float = -1.0
    untie_lm_head_frac: float = -1.0  # < 0: never untie

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.default))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"ScheduleConfig.{name} = {getattr(self, name)!r}: {rule}")

        need(self.num_iterations >= 1, "num_iterations", "must be >= 1 (the number of optimizer steps)")
        need(0.0 <= self.cooldown_frac <= 1.0, "cooldown_frac", "must be in [0, 1] (0 = no cooldown)")
        need(self.lr_final_mult >= 0.0, "lr_final_mult", "must be >= 0 (the LR multiplier at the end)")
        need(0 <= self.lr_freeze_last_steps <= self.num_iterations, "lr_freeze_last_steps",
             f"must be in [0, num_iterations={self.num_iterations}]")
        need(0.0 <= self.muon_momentum < 1.0, "muon_momentum", "must be in [0, 1)")
        need(0.0 <= self.momentum_warmup_start < 1.0, "momentum_warmup_start", "must be in [0, 1)")
        need(self.momentum_warmup_steps >= 0, "momentum_warmup_steps", "must be >= 0 (0 = no warmup)")
        need(self.window_schedule_end_step >= 0, "window_schedule_end_step", "must be >= 0 (0 = off)")
        for step, count in self.expert_activation_schedule:
            need(step >= 0 and count >= 1, "expert_activation_schedule",
                 "every (step, count) needs step >= 0 and count >= 1")
        need(self.router_temp_init > 0.0, "router_temp_init", "must be > 0")
        need(self.router_temp_final > 0.0, "router_temp_final", "must be > 0")
        need(self.router_temp_power > 0.0, "router_temp_power", "must be > 0")
        need(self.router_temp_anchor_delta_steps >= 0, "router_temp_anchor_delta_steps",
             "must be >= 0 (0 = off)")
        need(0.0 <= self.router_temp_anchor_ratio < 1.0, "router_temp_anchor_ratio",
             "must be in [0, 1) (0 = no anchor, use router_temp_power)")
        need(self.router_temp_schedule_end_step >= 0, "router_temp_schedule_end_step",
             "must be >= 0 (0 = off)")
        for start, end in self.router_gumbel_schedule:
            need(start >= 0 and (end < 0 or start < end), "router_gumbel_schedule",
                 "every [start, end) window needs 0 <= start < end (end < 0 means until the end)")
        for name in ("router_freeze_frac", "shared_ffn_freeze_frac"):
            need(getattr(self, name) >= 0.0, name, "must be >= 0 (values > 1 never freeze)")

    def at(
        self,
        step: int,
        *,
        num_experts: int,
        max_window_tokens: int = 3456,
        block_size: int = 128,
        evaluation: bool = False,
    ) -> StepValues:
        """All schedule values at ``step`` (0-based optimizer step). ``evaluation=True`` turns Gumbel
        noise off unless ``gumbel_in_eval``; every other value is the training value of that step."""
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1 (got {num_experts})")
        n = self.num_iterations
        anchor = _anchor_step(self.expert_activation_schedule)
        progress = step / n
        router_mult = curves.rampdown_multiplier(progress, self.router_lr_reduce_start_frac,
                                                 self.router_freeze_frac)
        router_frozen = progress >= self.router_freeze_frac
        return StepValues(
            step=step,
            lr_mult=curves.lr_multiplier(step, n, self.cooldown_frac, self.lr_final_mult,
                                         self.lr_freeze_last_steps),
            group_mult={
                ROUTER: router_mult,
                ADAPTER: router_mult if self.router_freeze_adapters else 1.0,
                SHARED_FFN: curves.rampdown_multiplier(
                    progress, self.shared_ffn_lr_reduce_start_frac, self.shared_ffn_freeze_frac
                ),
            },
            momentum=curves.momentum_warmup(step, self.momentum_warmup_steps, self.momentum_warmup_start,
                                     self.muon_momentum),
            window_blocks=curves.attention_window_blocks(step, n, max_window_tokens, block_size,
                                                  self.window_schedule_end_step),
            temperature=curves.router_temperature(
                step,
                n,
                self.router_temp_init,
                self.router_temp_final,
                power=self.router_temp_power,
                anchor_delta_steps=self.router_temp_anchor_delta_steps,
                anchor_ratio=self.router_temp_anchor_ratio,
                start_step=anchor,
                end_step=self.router_temp_schedule_end_step,
            ),
            logit_cap=curves.router_logit_cap(
                step,
                self.router_logit_cap_initial,
                self.router_logit_cap_final,
                delta_steps=self.router_logit_cap_delta_steps,
                start_step=anchor,
            ),
            gumbel=curves.gumbel_active(
                step,
                self.router_gumbel_schedule,
                n,
                enabled=self.router_use_gumbel and (self.gumbel_in_eval or not evaluation),
            ),
            active_experts=curves.active_expert_count(
                step, _normalized_activation(self.expert_activation_schedule, num_experts), num_experts
            ),
            router_frozen=router_frozen,
            adapters_frozen=router_frozen and self.router_freeze_adapters,
            ffn_frozen=progress >= self.shared_ffn_freeze_frac,
            head_untied=self.untie_lm_head_frac >= 0 and step >= int(self.untie_lm_head_frac * n),
        )


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (int -> float and list -> tuple are
    converted)."""
    where = f"ScheduleConfig.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false (got {value!r})")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer (got {value!r})")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number (got {value!r})")
        return float(value)
    # tuple of (int, int) pairs
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where} must be a list of [int, int] pairs (got {value!r})")
    pairs = []
    for entry in value:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in entry)
        ):
            raise ValueError(f"{where}: every entry must be an [int, int] pair (got {entry!r} in {value!r})")
        pairs.append((entry[0], entry[1]))
    return tuple(pairs)
