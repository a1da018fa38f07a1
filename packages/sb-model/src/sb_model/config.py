"""Configuration of the shared expert bank (every option validated up front, with a fix in the message)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GatingKind = Literal["softmax", "sigmoid"]
AssignmentKind = Literal["topk", "sinkhorn"]
CapMode = Literal["hard", "tanh"]
ReverseEmaMode = Literal["snapshot", "document_ema"]
ExpertImpl = Literal["auto", "grouped_mm", "cpu_parallel", "blocked_bmm"]


@dataclass(frozen=True)
class BankConfig:
    """Everything that fixes the shapes and the math of a :class:`~sb_model.bank.SharedExpertBank`.

    Schedule values that change during training (temperature, logit cap, Gumbel on/off, the active-expert
    mask, per-layer multipliers, freeze flags) are *not* here: they are passed as tensors at call time
    (see :class:`~sb_model.bank.RoutingSchedule`) so that changing them never recompiles.
    """

    model_dim: int
    num_layers: int
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
    flag_block_size: int = 128
    eod_token_id: int = 50256
    # Routing.
    gating: GatingKind = "softmax"
    assignment: AssignmentKind = "topk"
    sinkhorn_iters: int = 8
    sinkhorn_tau: float = 1.0
    capacity_factor: float | None = None  # None: dropless
    logit_cap_mode: CapMode = "hard"
    normalize_gates: bool = False  # reference: raw gate probabilities, not renormalised over the top-k
    # Adapters.
    use_adapters: bool = True
    adapter_layer_map: tuple[int, ...] | None = None  # layer -> adapter slot (layer tying); None: identity
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

        need(self.model_dim > 0, f"model_dim must be > 0 (got {self.model_dim})")
        need(self.num_layers > 0, f"num_layers must be > 0 (got {self.num_layers})")
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
        need(self.flag_block_size >= 1, f"flag_block_size must be >= 1 (got {self.flag_block_size})")
        for name in ("ema_alpha_fwd", "ema_alpha_rev"):
            a = getattr(self, name)
            need(0.0 < a < 1.0, f"{name} must be in (0, 1) (got {a})")
        need(self.ema_window_rev >= 1, f"ema_window_rev must be >= 1 (got {self.ema_window_rev})")
        need(
            self.reverse_ema_mode in ("snapshot", "document_ema"),
            f"reverse_ema_mode must be 'snapshot' or 'document_ema' (got {self.reverse_ema_mode!r})",
        )
        need(
            self.gating in ("softmax", "sigmoid"),
            f"gating must be 'softmax' or 'sigmoid' (got {self.gating!r})",
        )
        need(
            self.assignment in ("topk", "sinkhorn"),
            f"assignment must be 'topk' or 'sinkhorn' (got {self.assignment!r})",
        )
        need(self.sinkhorn_iters >= 1, f"sinkhorn_iters must be >= 1 (got {self.sinkhorn_iters})")
        need(self.sinkhorn_tau > 0, f"sinkhorn_tau must be > 0 (got {self.sinkhorn_tau})")
        need(
            self.capacity_factor is None or self.capacity_factor > 0,
            f"capacity_factor must be None (dropless) or > 0 (got {self.capacity_factor})",
        )
        need(
            self.logit_cap_mode in ("hard", "tanh"),
            f"logit_cap_mode must be 'hard' (reference clamp) or 'tanh' (got {self.logit_cap_mode!r})",
        )
        need(
            self.expert_impl in ("auto", "grouped_mm", "cpu_parallel", "blocked_bmm"),
            "expert_impl must be 'auto', 'grouped_mm', 'cpu_parallel' or 'blocked_bmm' "
            f"(got {self.expert_impl!r})",
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
        if self.adapter_layer_map is not None:
            need(
                len(self.adapter_layer_map) == self.num_layers,
                f"adapter_layer_map must have num_layers={self.num_layers} entries "
                f"(got {len(self.adapter_layer_map)})",
            )
            need(
                all(0 <= s < self.num_layers for s in self.adapter_layer_map),
                "adapter_layer_map entries must be layer indices in [0, num_layers)",
            )

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
    def num_adapter_slots(self) -> int:
        return self.num_layers if self.adapter_layer_map is None else max(self.adapter_layer_map) + 1

    def adapter_slot(self, layer_idx: int) -> int:
        return layer_idx if self.adapter_layer_map is None else self.adapter_layer_map[layer_idx]
