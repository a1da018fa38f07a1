"""`GPTConfig`: every shape and option of a SwitchBank GPT in one validated dataclass, with the
record preset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from sb_model.attention_masks import long_window_layers
from sb_model.config import BankConfig

AttentionImpl = Literal["auto", "flex", "sdpa"]
FFNKind = Literal["bank", "dense"]
BoostShape = Literal["peak", "valley", "linear_start", "linear_end"]

REFERENCE_SKIP_MAP: tuple[tuple[int, int], ...] = ((9, 6), (10, 4), (11, 2))  # (destination, source) layers


def next_multiple_of(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class GPTConfig:
    """Shapes and options of :class:`~sb_model.gpt.GPT`. Defaults are the record's where one exists.

    Schedule values (router temperature, logit cap, Gumbel, active experts, attention window) are not here:
    they change during training and are set on the model as tensors (``GPT.routing_schedule``,
    ``GPT.set_window_blocks``)."""

    # Shapes
    vocab_size: int = 50257
    model_dim: int = 896
    num_layers: int = 28
    head_dim: int = 128
    num_value_embeds: int = 2
    max_seq_len: int = 12288  # rotary table length
    vocab_multiple: int = 128  # token embedding and LM head rows are padded to this multiple
    # Attention
    attention: AttentionImpl = "auto"  # auto: FlexAttention when available, else SDPA with a dense mask
    attn_scale: float = 0.12
    block_size: int = 128  # attention window granularity and router block-position flags
    max_window_tokens: int = 3456  # the long window's end value in the reference's window schedule
    skip_attn_layers: tuple[int, ...] = (11,)
    long_window_layers: tuple[int, ...] | None = (
        None  # None: the reference's rule (every 4th layer for 28/32)
    )
    skip_map: tuple[tuple[int, int], ...] | None = None  # (dest, src); None: reference {9: 6, 10: 4, 11: 2}
    layer_tie_groups: tuple[tuple[int, ...], ...] = ()  # layers sharing attention and adapters
    # Head
    tie_lm_head: bool = False
    untie_lm_head_later: bool = False  # tied head with its own weights ready for GPT.untie_lm_head()
    logit_softcap: float = 15.0
    eod_token_id: int = 50256
    # FFN: the shared bank (or a dense per-layer FFN of the same active size, for baselines)
    ffn: FFNKind = "bank"
    num_experts: int = 8
    ffn_hidden: int = 1024
    topk: int = 1
    lb_coeff: float = 2.15e-3
    router_entropy_coeff: float = 2.5e-3
    use_router_adapters: bool = True
    router_block_pos_bins: int = 8
    first_doc_tokens: int = 64
    router_enable_forward_ema: bool = False
    router_enable_reverse_ema: bool = True
    ema_alpha_fwd: float = 0.80
    ema_alpha_rev: float = 0.85
    ema_window_fwd: int = 128
    ema_window_rev: int = 384
    router_ema_layer_stride: int = -1
    bank_options: Mapping[str, Any] = field(default_factory=dict)  # any other BankConfig field
    # Per-layer router boosts by layer position (spec 2.7 step 3)
    router_boost_shape: BoostShape = "peak"
    router_temp_boost: float = 0.2
    router_lb_boost: float = 0.5
    router_layer_peak_frac: float = 0.475
    router_boost_decay_scale: float = 1.0  # the reference passes a constant 1.0

    def __post_init__(self) -> None:
        L = self.num_layers

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"GPTConfig: {msg}")

        need(
            self.vocab_size > 0 and self.model_dim > 0 and L > 0,
            "vocab_size, model_dim, num_layers must be > 0",
        )
        need(
            self.head_dim % 4 == 0 and self.model_dim % self.head_dim == 0,
            f"model_dim ({self.model_dim}) must be a multiple of head_dim ({self.head_dim}), "
            "itself a multiple "
            "of 4 (rotary pairs)",
        )
        need(0 <= self.num_value_embeds <= 3, f"num_value_embeds must be 0..3 (got {self.num_value_embeds})")
        need(self.max_seq_len >= 1 and self.block_size >= 1, "max_seq_len and block_size must be >= 1")
        need(
            self.attention in ("auto", "flex", "sdpa"),
            f"attention must be auto|flex|sdpa (got {self.attention!r})",
        )
        need(self.ffn in ("bank", "dense"), f"ffn must be 'bank' or 'dense' (got {self.ffn!r})")
        need(
            all(0 <= i < L for i in self.skip_attn_layers),
            f"skip_attn_layers must be layer indices in [0, {L}) (got {self.skip_attn_layers})",
        )
        need(
            all(0 <= i < L for i in self.long_layers),
            f"long_window_layers must be layer indices in [0, {L}) (got {self.long_window_layers})",
        )
        if self.skip_map is not None:
            for dest, src in self.skip_map:
                need(
                    0 <= src < dest < L,
                    f"skip_map entry (dest={dest}, src={src}) needs 0 <= src < dest < {L}",
                )
        seen: set[int] = set()
        for group in self.layer_tie_groups:
            need(
                len(group) >= 2 and len(set(group)) == len(group),
                f"tie group {group} needs >= 2 distinct layers",
            )
            need(all(0 <= i < L for i in group), f"tie group {group} has layers outside [0, {L})")
            need(
                not set(group) & set(self.skip_attn_layers),
                f"tie group {group} contains a skip-attention layer",
            )
            need(not set(group) & seen, f"layer tie groups overlap at {set(group) & seen}")
            seen |= set(group)
        need(self.logit_softcap >= 0, f"logit_softcap must be >= 0 (0 disables it), got {self.logit_softcap}")
        need(
            not self.untie_lm_head_later or self.tie_lm_head,
            "untie_lm_head_later needs tie_lm_head=True (an untied head has nothing to untie)",
        )
        need(
            self.router_boost_shape in ("peak", "valley", "linear_start", "linear_end"),
            "router_boost_shape must be peak|valley|linear_start|linear_end "
            f"(got {self.router_boost_shape!r})",
        )
        if self.ffn == "bank":
            self.bank_config()  # validates the bank options (raises BankConfig's error)

    # ------------------------------------------------------------------------------------------ derived
    @property
    def num_heads(self) -> int:
        return self.model_dim // self.head_dim

    @property
    def padded_vocab_size(self) -> int:
        return next_multiple_of(self.vocab_size, self.vocab_multiple)

    @property
    def long_layers(self) -> tuple[int, ...]:
        if self.long_window_layers is not None:
            return tuple(self.long_window_layers)
        return long_window_layers(self.num_layers)

    @property
    def skip_connections(self) -> dict[int, int]:
        """dest layer -> source layer; the reference map keeps only pairs that exist in this depth."""
        if self.skip_map is not None:
            return dict(self.skip_map)
        return {d: s for d, s in REFERENCE_SKIP_MAP if d < self.num_layers}

    @property
    def layer_tie_map(self) -> tuple[int, ...]:
        """layer -> the layer whose attention and adapters it uses (the first of its tie group)."""
        owner = list(range(self.num_layers))
        for group in self.layer_tie_groups:
            for i in group:
                owner[i] = group[0]
        return tuple(owner)

    def value_embed_layers(self) -> list[int | None]:
        """Per layer, the value-embedding table it mixes in (None: none): the first n and last n layers use
        tables 0..n-1 in order (reference layout), padded or truncated to num_layers."""
        n, L = self.num_value_embeds, self.num_layers
        if n == 0:
            return [None] * L
        layout: list[int | None] = [*range(n), *([None] * max(L - 2 * n, 0)), *range(n)]
        return (layout + [None] * L)[:L]

    def bank_config(self) -> BankConfig:
        adapter_map = self.layer_tie_map if self.layer_tie_groups else None
        kw: dict[str, Any] = dict(
            model_dim=self.model_dim,
            num_layers=self.num_layers,
            num_experts=self.num_experts,
            ffn_hidden=self.ffn_hidden,
            topk=self.topk,
            use_forward_ema=self.router_enable_forward_ema,
            use_reverse_ema=self.router_enable_reverse_ema,
            ema_alpha_fwd=self.ema_alpha_fwd,
            ema_alpha_rev=self.ema_alpha_rev,
            ema_window_fwd=self.ema_window_fwd,
            ema_window_rev=self.ema_window_rev,
            ema_layer_stride=self.router_ema_layer_stride,
            block_pos_bins=self.router_block_pos_bins,
            first_doc_tokens=self.first_doc_tokens,
            flag_block_size=self.block_size,
            eod_token_id=self.eod_token_id,
            use_adapters=self.use_router_adapters,
            adapter_layer_map=adapter_map,
            lb_coeff=self.lb_coeff,
            entropy_coeff=self.router_entropy_coeff,
        )
        kw.update(self.bank_options)
        return BankConfig(**kw)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bank_options"] = dict(self.bank_options)
        return out

    def with_(self, **changes: Any) -> GPTConfig:
        return replace(self, **changes)

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def record(cls, **overrides: Any) -> GPTConfig:
        """The record's model (28 layers, d=896, 8 experts of 1024, top-1; 282,395,148 parameters)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> GPTConfig:
        """A CPU-sized model for tests and examples (4 layers, d=32, 4 experts of 64, blocks of 16 tokens)."""
        kw: dict[str, Any] = dict(
            vocab_size=97,
            model_dim=32,
            num_layers=4,
            head_dim=16,
            num_value_embeds=1,
            max_seq_len=256,
            vocab_multiple=32,
            attention="sdpa",
            block_size=16,
            max_window_tokens=64,
            skip_attn_layers=(2,),
            skip_map=((3, 1),),
            eod_token_id=0,
            num_experts=4,
            ffn_hidden=64,
            topk=1,
            ema_window_rev=8,
            first_doc_tokens=8,
        )
        kw.update(overrides)
        return cls(**kw)
