"""`BankConfig`: every option of the shared expert bank, validated up front with a fix in each message.

The fields a bank takes from the GPT around it (``GPT_FIELDS``: model width, depth, flag block size, end-of-
document token, adapter map of tied layers) default to None; :class:`~sb_model.gpt_config.GPTConfig` fills
them in. A bank built on its own sets them explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

GatingKind = Literal["softmax", "sigmoid"]
AssignmentKind = Literal["topk", "sinkhorn"]
CapMode = Literal["hard", "tanh"]
ReverseEmaMode = Literal["snapshot", "document_ema"]
ExpertImpl = Literal["auto", "grouped_mm", "cpu_parallel", "blocked_bmm"]
BoostShape = Literal["peak", "valley", "linear_start", "linear_end"]

# BankConfig fields that are facts of the GPT, filled in by GPTConfig (an explicit value must agree)
GPT_FIELDS: tuple[str, ...] = (
    "model_dim",
    "num_layers",
    "flag_block_size",
    "eod_token_id",
    "adapter_layer_map",
)


@dataclass(frozen=True)
class BankConfig:
    """Everything that fixes the shapes and the math of a :class:`~sb_model.bank.bank.SharedExpertBank`.

    Schedule values that change during training (temperature, logit cap, Gumbel on/off, the active-expert
    mask, freeze flags) are *not* here: they reach the bank as tensors at call time
    (:class:`~sb_model.schedule_tensors.RoutingSchedule`) so that changing them never recompiles.
    """

    # Taken from the GPT (GPT_FIELDS): None until GPTConfig fills them in.
    model_dim: int | None = None
    num_layers: int | None = None
    flag_block_size: int | None = None  # tokens per attention block (router block-position flags)
    eod_token_id: int | None = None
    adapter_layer_map: tuple[int, ...] | None = None  # layer -> adapter slot (tied layers); None: identity
    # Experts. num_experts is per router; with expert_layer_map each expert group owns that many of its own.
    expert_layer_map: tuple[int, ...] | None = None  # layer -> expert group 0..G-1; None: one bank for all
    num_experts: int = 8
    ffn_hidden: int = 1024
    topk: int = 1
    # Router input features.
    use_forward_ema: bool = False
    use_reverse_ema: bool = True
    reverse_ema_mode: ReverseEmaMode = "snapshot"
    ema_alpha_fwd: float = 0.80
    ema_alpha_rev: float = 0.85
    ema_window_fwd: int = 128
    ema_window_rev: int = 384
    ema_layer_stride: int = -1  # <= 0 means num_layers: one EMA computation shared by every layer
    block_pos_bins: int = 8
    first_doc_tokens: int = 64
    # Routing.
    gating: GatingKind = "softmax"
    assignment: AssignmentKind = "topk"
    sinkhorn_iters: int = 8
    sinkhorn_tau: float = 1.0
    capacity_factor: float | None = None  # None: dropless
    logit_cap_mode: CapMode = "hard"
    normalize_gates: bool = False  # reference: raw gate probabilities, not renormalised over the top-k
    # Per-layer temperature and load-balance multipliers 1 + boost * shape(layer position)
    # (docs/design/model.md, layer boosts).
    boost_shape: BoostShape = "peak"
    temp_boost: float = 0.2
    lb_boost: float = 0.5
    boost_peak_frac: float = 0.475
    boost_decay_scale: float = 1.0  # the reference passes a constant 1.0
    # Adapters.
    use_adapters: bool = True
    # Aux losses.
    lb_coeff: float = 2.15e-3
    entropy_coeff: float = 2.5e-3
    switch_lb_coeff: float = 0.0
    z_loss_coeff: float = 0.0
    # Expert compute.
    expert_impl: ExpertImpl = "auto"
    group_align: int | None = None  # rows per expert group are padded to this; None: 1 on CPU, 16 on CUDA
    fallback_block_rows: int = 64
    collect_metrics: bool = True

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"BankConfig: {msg}")

        for name in ("model_dim", "num_layers", "flag_block_size"):
            value = getattr(self, name)
            need(value is None or value > 0, f"{name} must be > 0 (got {value})")
        need(self.num_experts >= 1, f"num_experts must be >= 1 (got {self.num_experts})")
        need(self.ffn_hidden > 0, f"ffn_hidden must be > 0 (got {self.ffn_hidden})")
        need(
            1 <= self.topk <= self.num_experts,
            f"topk must be in [1, num_experts={self.num_experts}] (got {self.topk})",
        )
        need(
            self.block_pos_bins in (4, 8, 16),
            f"block_pos_bins must be 4, 8 or 16 (got {self.block_pos_bins}); the reference supports only "
            "these",
        )
        need(self.first_doc_tokens >= 1, f"first_doc_tokens must be >= 1 (got {self.first_doc_tokens})")
        for name in ("ema_alpha_fwd", "ema_alpha_rev"):
            a = getattr(self, name)
            need(0.0 < a < 1.0, f"{name} must be in (0, 1) (got {a})")
        need(self.ema_window_rev >= 1, f"ema_window_rev must be >= 1 (got {self.ema_window_rev})")
        for name, allowed in (
            ("reverse_ema_mode", ("snapshot", "document_ema")),
            ("gating", ("softmax", "sigmoid")),
            ("assignment", ("topk", "sinkhorn")),
            ("logit_cap_mode", ("hard", "tanh")),
            ("boost_shape", ("peak", "valley", "linear_start", "linear_end")),
            ("expert_impl", ("auto", "grouped_mm", "cpu_parallel", "blocked_bmm")),
        ):
            need(
                getattr(self, name) in allowed,
                f"{name} must be one of {', '.join(map(repr, allowed))} (got {getattr(self, name)!r})",
            )
        need(self.sinkhorn_iters >= 1, f"sinkhorn_iters must be >= 1 (got {self.sinkhorn_iters})")
        need(self.sinkhorn_tau > 0, f"sinkhorn_tau must be > 0 (got {self.sinkhorn_tau})")
        need(
            self.capacity_factor is None or self.capacity_factor > 0,
            f"capacity_factor must be None (dropless) or > 0 (got {self.capacity_factor})",
        )
        need(
            self.group_align is None or self.group_align >= 1,
            f"group_align must be None or >= 1 (got {self.group_align})",
        )
        need(
            self.fallback_block_rows >= 1,
            f"fallback_block_rows must be >= 1 (got {self.fallback_block_rows})",
        )
        for name in ("lb_coeff", "entropy_coeff", "switch_lb_coeff", "z_loss_coeff"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0 (got {getattr(self, name)})")
        # Per-layer multipliers 1 + scale·boost·shape, shape in [0, 1] (docs/design/model.md, layer boosts):
        # a temperature multiplier <= 0 would be clamped to a tiny temperature when routing, and a negative
        # load-balance multiplier would reward imbalance.
        need(
            0.0 <= self.boost_peak_frac <= 1.0,
            f"boost_peak_frac must be in [0, 1] (a position in the depth; got {self.boost_peak_frac})",
        )
        temp = self.boost_decay_scale * self.temp_boost
        need(
            temp > -1.0,
            f"temp_boost * boost_decay_scale must be > -1 (got {temp}): the per-layer temperature multiplier "
            "1 + boost * shape must stay positive; use a smaller negative boost or 0 to turn it off",
        )
        lb = self.boost_decay_scale * self.lb_boost
        need(
            lb >= -1.0,
            f"lb_boost * boost_decay_scale must be >= -1 (got {lb}): the per-layer load-balance multiplier "
            "1 + boost * shape must not go negative; use a smaller negative boost or 0 to turn it off",
        )
        if self.num_layers is not None:
            need(
                self.ema_layer_stride <= self.num_layers,
                f"ema_layer_stride={self.ema_layer_stride} exceeds num_layers={self.num_layers}; a stride of "
                "num_layers or more is one EMA group for all layers: say so with -1",
            )
        if self.adapter_layer_map is not None and self.num_layers is not None:
            need(
                len(self.adapter_layer_map) == self.num_layers,
                f"adapter_layer_map must have num_layers={self.num_layers} entries "
                f"(got {len(self.adapter_layer_map)})",
            )
            need(
                all(0 <= s < self.num_layers for s in self.adapter_layer_map),
                "adapter_layer_map entries must be layer indices in [0, num_layers)",
            )
        if self.expert_layer_map is not None and self.num_layers is not None:
            groups = self.expert_layer_map
            need(
                len(groups) == self.num_layers and set(groups) == set(range(max(groups) + 1)),
                f"expert_layer_map must give each of the num_layers={self.num_layers} layers an expert "
                f"group, the groups numbered 0..G-1 with none left empty (got {groups}); GPTConfig sets it "
                "for ffn='layer_moe'",
            )

    # ------------------------------------------------------------------------------------ GPT facts
    def with_gpt_fields(self, **gpt_values: Any) -> BankConfig:
        """This config with the GPT's facts filled in (``GPT_FIELDS`` names). A field already set must agree
        with the GPT's value: the bank is built from one model, and a second spelling could only disagree."""
        for name, value in gpt_values.items():
            if name not in GPT_FIELDS:
                raise TypeError(f"{name!r} is not one of the GPT's fields of BankConfig {GPT_FIELDS}")
            mine = getattr(self, name)
            if mine is not None and mine != value:
                raise ValueError(
                    f"BankConfig.{name}={mine!r} disagrees with the GPT's value {value!r}; the bank takes "
                    f"{name} from the GPT config, so leave it unset in [model.bank] (or set the GPT's field)"
                )
        return replace(self, **gpt_values)

    def without_gpt_fields(self) -> BankConfig:
        """This config with the GPT's facts unset again (to move the bank options to another GPT)."""
        return replace(self, **dict.fromkeys(GPT_FIELDS))

    def require_gpt_fields(self) -> None:
        """Raise unless the width and depth a bank needs are set."""
        missing = [n for n in ("model_dim", "num_layers") if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"BankConfig: {' and '.join(missing)} not set; build the bank from a GPTConfig (which fills "
                "them in) or pass them explicitly"
            )

    # ------------------------------------------------------------------------------------ derived
    @property
    def layer_stride(self) -> int:
        """Layers per EMA group (the reference's `router_ema_layer_stride`, with <= 0 meaning all layers)."""
        return self.num_layers if self.ema_layer_stride <= 0 else self.ema_layer_stride

    @property
    def num_flag_features(self) -> int:
        return 3 + self.block_pos_bins

    @property
    def feature_slices(self) -> dict[str, tuple[int, int]]:
        """Column ranges of each router input feature in the router weight matrix (in input order)."""
        d = self.model_dim
        out: dict[str, tuple[int, int]] = {"tok": (0, d)}
        at = d
        if self.use_forward_ema:
            out["ema_fwd"] = (at, at + d)
            at += d
        if self.use_reverse_ema:
            out["ema_rev"] = (at, at + d)
            at += d
        out["flags"] = (at, at + self.num_flag_features)
        return out

    @property
    def router_in_dim(self) -> int:
        return (
            1 + int(self.use_forward_ema) + int(self.use_reverse_ema)
        ) * self.model_dim + self.num_flag_features

    @property
    def num_expert_groups(self) -> int:
        """G: how many sets of ``num_experts`` experts the bank holds (1: the shared bank)."""
        return 1 if self.expert_layer_map is None else max(self.expert_layer_map) + 1

    def expert_group(self, layer_idx: int) -> int:
        """The expert group whose experts layer ``layer_idx`` routes to (0 for the shared bank)."""
        return 0 if self.expert_layer_map is None else self.expert_layer_map[layer_idx]

    @property
    def num_adapter_slots(self) -> int:
        return self.num_layers if self.adapter_layer_map is None else max(self.adapter_layer_map) + 1

    def adapter_slot(self, layer_idx: int) -> int:
        return layer_idx if self.adapter_layer_map is None else self.adapter_layer_map[layer_idx]
