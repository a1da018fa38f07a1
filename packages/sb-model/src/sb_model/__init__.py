"""SwitchBank model modules: the shared expert bank, its per-layer routers and their features."""

from sb_model.aux_losses import (
    cv_squared,
    entropy,
    entropy_gap,
    reference_aux_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from sb_model.bank import RoutingContext, SharedExpertBank
from sb_model.config import BankConfig
from sb_model.dispatch import Dispatch, build_dispatch
from sb_model.ema import causal_reverse_snapshot, document_ema, reference_forward_ema, segmented_ema
from sb_model.experts import dense_expert_ffn, grouped_mm_supported, init_linear_, relu_squared
from sb_model.metrics import RouterMetrics, RoutingReport
from sb_model.router_features import build_router_flags, document_starts
from sb_model.routing import Routing, live_experts, route, shape_logits, sinkhorn_plan
from sb_model.schedules import (
    RoutingSchedule,
    active_expert_count,
    active_expert_mask,
    gumbel_active,
    layer_boost_shape,
    layer_multipliers,
    normalize_activation_schedule,
    router_logit_cap,
    router_temperature,
    second_expert_step,
)

__version__ = "0.1.0"

__all__ = [
    "BankConfig",
    "Dispatch",
    "RouterMetrics",
    "Routing",
    "RoutingContext",
    "RoutingReport",
    "RoutingSchedule",
    "SharedExpertBank",
    "active_expert_count",
    "active_expert_mask",
    "build_dispatch",
    "build_router_flags",
    "causal_reverse_snapshot",
    "cv_squared",
    "dense_expert_ffn",
    "document_ema",
    "document_starts",
    "entropy",
    "entropy_gap",
    "grouped_mm_supported",
    "gumbel_active",
    "init_linear_",
    "layer_boost_shape",
    "layer_multipliers",
    "live_experts",
    "normalize_activation_schedule",
    "reference_aux_loss",
    "reference_forward_ema",
    "relu_squared",
    "route",
    "router_logit_cap",
    "router_temperature",
    "router_z_loss",
    "second_expert_step",
    "segmented_ema",
    "shape_logits",
    "sinkhorn_plan",
    "switch_load_balancing_loss",
]
