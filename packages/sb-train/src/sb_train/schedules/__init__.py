"""Every per-step schedule of a SwitchBank run, as host-side functions of the step (docs/design/schedules.md).

- :mod:`~sb_train.schedules.curves`: the step -> value functions (LR multiplier and rampdowns, Muon momentum
  warmup, attention window, router temperature and logit cap, Gumbel windows, expert activation);
- :mod:`~sb_train.schedules.apply`: :func:`set_model_schedule` and :func:`set_optimizer_schedule`, which
  hand a step's values to the model and the optimizer;
- :mod:`~sb_train.schedules.schedule_config`: :class:`ScheduleConfig` (the ``[schedule]`` section) and
  :meth:`ScheduleConfig.at`, which bundles every value of one step (freezes and head untying included) into a
  :class:`StepValues`.

Through ``apply`` the trainer writes these values into the model's schedule tensors (``RoutingSchedule.set_``,
``GPT.set_window_blocks``) and calls ``GPT.untie_lm_head()`` once the schedule says so; the model itself
never sees a step.
"""

from sb_train.schedules.curves import (
    active_expert_count,
    attention_window_blocks,
    gumbel_active,
    lr_multiplier,
    momentum_warmup,
    normalize_activation_schedule,
    rampdown_multiplier,
    router_logit_cap,
    router_temperature,
    second_expert_step,
)
from sb_train.schedules.schedule_config import (
    RECORD_EXPERT_ACTIVATION_SCHEDULE,
    RECORD_GUMBEL_SCHEDULE,
    ScheduleConfig,
    StepValues,
)

__all__ = [
    "RECORD_EXPERT_ACTIVATION_SCHEDULE",
    "RECORD_GUMBEL_SCHEDULE",
    "ScheduleConfig",
    "StepValues",
    "active_expert_count",
    "attention_window_blocks",
    "gumbel_active",
    "lr_multiplier",
    "momentum_warmup",
    "normalize_activation_schedule",
    "rampdown_multiplier",
    "router_logit_cap",
    "router_temperature",
    "second_expert_step",
]
