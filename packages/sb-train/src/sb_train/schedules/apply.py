"""Applying one step's schedule values: writing them into the model's schedule tensors and the optimizer's
groups (docs/design/schedules.md). The trainer and the GPU check call these, so the rule exists once."""

from __future__ import annotations

import torch

from sb_model import GPT
from sb_train.param_groups import MUON_GROUPS
from sb_train.schedules.schedule_config import StepValues


def set_model_schedule(model: GPT, v: StepValues) -> None:
    """Hand one step's schedule values to the model: the attention window and the routing tensors (no
    recompile: the same tensors get new values), and the head untying once the schedule reaches it."""
    model.set_window_blocks(v.window_blocks)
    if model.bank is not None:
        model.routing_schedule.set_(temperature=v.temperature, logit_cap=v.logit_cap, gumbel=v.gumbel,
                                    active_experts=v.active_experts, router_frozen=v.router_frozen,
                                    adapters_frozen=v.adapters_frozen)
    if v.head_untied:
        model.untie_lm_head()


def set_optimizer_schedule(opt: torch.optim.Optimizer, v: StepValues) -> None:
    """Hand one step's learning rates (every group, Muon's included) and Muon momentum to the optimizer."""
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * v.lr_for(g["name"])
        if g["name"] in MUON_GROUPS:
            g["momentum"] = v.momentum
