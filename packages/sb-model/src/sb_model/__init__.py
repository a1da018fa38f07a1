"""SwitchBank model modules: the shared expert bank and its per-layer routers; attention, blocks, the GPT."""

from sb_model.attention import CausalSelfAttention, KVCache, rms_norm
from sb_model.attention_masks import (
    FLEX_AVAILABLE,
    block_layout,
    block_mask_to_dense,
    dense_attention_mask,
    document_causal_window_mask,
    flex_block_mask,
    long_window_layers,
)
from sb_model.attention_masks import document_ids as attention_document_ids
from sb_model.aux_losses import (
    cv_squared,
    entropy,
    entropy_gap,
    reference_aux_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from sb_model.bank import RoutingContext, SharedExpertBank
from sb_model.block import Block, DenseFFN
from sb_model.config import BankConfig
from sb_model.cpu_parallel_experts import cpu_parallel_experts_available, expert_ffn_cpu_parallel
from sb_model.decode_cache import DecodeState, RouterFeatureHistory
from sb_model.dispatch import Dispatch, build_dispatch
from sb_model.ema import causal_reverse_snapshot, document_ema, reference_forward_ema, segmented_ema
from sb_model.experts import dense_expert_ffn, grouped_mm_supported, init_linear_, relu_squared
from sb_model.generation import generate, sample_next
from sb_model.gpt import GPT, AttentionMasks, GPTOutput
from sb_model.gpt_config import GPTConfig
from sb_model.metrics import RouterMetrics, RoutingReport
from sb_model.rotary import Rotary, apply_rotary, rotary_frequencies
from sb_model.router_features import build_router_flags, document_starts
from sb_model.routing import Routing, live_experts, route, shape_logits, sinkhorn_plan
from sb_model.schedules import (
    RoutingSchedule,
    active_expert_mask,
    layer_boost_shape,
    layer_multipliers,
)

__version__ = "0.1.0"

__all__ = [
    "FLEX_AVAILABLE",
    "GPT",
    "AttentionMasks",
    "BankConfig",
    "Block",
    "CausalSelfAttention",
    "DecodeState",
    "DenseFFN",
    "Dispatch",
    "GPTConfig",
    "GPTOutput",
    "KVCache",
    "Rotary",
    "RouterFeatureHistory",
    "RouterMetrics",
    "Routing",
    "RoutingContext",
    "RoutingReport",
    "RoutingSchedule",
    "SharedExpertBank",
    "active_expert_mask",
    "apply_rotary",
    "attention_document_ids",
    "block_layout",
    "block_mask_to_dense",
    "build_dispatch",
    "build_router_flags",
    "causal_reverse_snapshot",
    "cpu_parallel_experts_available",
    "cv_squared",
    "dense_attention_mask",
    "dense_expert_ffn",
    "document_causal_window_mask",
    "document_ema",
    "document_starts",
    "entropy",
    "entropy_gap",
    "expert_ffn_cpu_parallel",
    "flex_block_mask",
    "generate",
    "grouped_mm_supported",
    "init_linear_",
    "layer_boost_shape",
    "layer_multipliers",
    "live_experts",
    "long_window_layers",
    "reference_aux_loss",
    "reference_forward_ema",
    "relu_squared",
    "rms_norm",
    "rotary_frequencies",
    "route",
    "router_z_loss",
    "sample_next",
    "segmented_ema",
    "shape_logits",
    "sinkhorn_plan",
    "switch_load_balancing_loss",
]
