"""`GPTConfig`: every shape and option of a SwitchBank GPT, with the bank's options nested as a BankConfig.

One validated dataclass, with the record and tiny presets; the nested
:class:`~sb_model.bank.config.BankConfig` gets its GPT facts (width, depth, ...) filled in from here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from sb_model.attention_masks import long_window_layers
from sb_model.bank.config import BankConfig

AttentionImpl = Literal["auto", "flex", "sdpa"]
FFNKind = Literal["bank", "layer_moe", "dense"]
LayerMoEMatch = Literal["active", "total"]
FFN_KINDS: tuple[str, ...] = ("bank", "layer_moe", "dense")
LAYER_MOE_MATCHES: tuple[str, ...] = ("active", "total")

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
    max_window_tokens: int = 3456  # the long window's end value (a multiple of block_size) in the schedule
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
    # FFN: the shared bank; or, for baselines (docs/design/model.md, per-layer MoE baseline), "layer_moe":
    # every layer (tie group) owns experts of its own, sized from the bank's options by layer_moe_match, or
    # "dense": a per-layer FFN of the bank's active size bank.topk * bank.ffn_hidden
    ffn: FFNKind = "bank"
    # layer_moe only (ignored otherwise): "active": each layer gets the bank's E experts (L x the expert
    # parameters, same active ones); "total": each layer gets E/G experts, so that the expert parameters
    # and the active ones both equal the bank's
    layer_moe_match: LayerMoEMatch = "active"
    bank: BankConfig = field(default_factory=BankConfig)  # its GPT fields are filled in from this config

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
            self.head_dim > 0 and self.head_dim % 4 == 0 and self.model_dim % self.head_dim == 0,
            f"model_dim ({self.model_dim}) must be a multiple of head_dim ({self.head_dim}), "
            "itself a positive multiple of 4 (rotary pairs)",
        )
        need(
            self.vocab_multiple >= 1,
            f"vocab_multiple must be >= 1 (got {self.vocab_multiple}); 1 means no padding of the vocabulary",
        )
        need(
            0 <= self.eod_token_id < self.vocab_size,
            f"eod_token_id={self.eod_token_id} is not a token of the vocabulary 0..{self.vocab_size - 1}: "
            "documents would never be separated; set eod_token_id to the tokenizer's end-of-text id "
            "(50256 for GPT-2, 0 for sb-data's bytes tokenizer) or raise vocab_size",
        )
        need(0 <= self.num_value_embeds <= 3, f"num_value_embeds must be 0..3 (got {self.num_value_embeds})")
        need(self.max_seq_len >= 1 and self.block_size >= 1, "max_seq_len and block_size must be >= 1")
        # The window is counted in whole blocks (docs/design/model.md, block masks and the window schedule).
        need(
            self.max_window_tokens >= self.block_size and self.max_window_tokens % self.block_size == 0,
            f"max_window_tokens={self.max_window_tokens} must be a positive multiple of block_size="
            f"{self.block_size} (the attention window is counted in whole blocks; a smaller value would be "
            f"raised to one block, a ragged one cut down); use "
            f"{max(1, round(self.max_window_tokens / self.block_size)) * self.block_size}",
        )
        need(
            self.attn_scale > 0 and math.isfinite(self.attn_scale),
            f"attn_scale must be a finite number > 0 (got {self.attn_scale})",
        )
        need(
            self.attention in ("auto", "flex", "sdpa"),
            f"attention must be auto|flex|sdpa (got {self.attention!r})",
        )
        need(
            self.ffn in FFN_KINDS,
            f"ffn must be one of {', '.join(map(repr, FFN_KINDS))} (got {self.ffn!r})",
        )
        need(
            self.layer_moe_match in LAYER_MOE_MATCHES,
            f"layer_moe_match must be one of {', '.join(map(repr, LAYER_MOE_MATCHES))} (got "
            f"{self.layer_moe_match!r}); 'active' matches the active parameters per token, 'total' the "
            "expert parameters too",
        )
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
            isinstance(self.bank, BankConfig),
            f"bank must be a BankConfig (got {type(self.bank).__name__}); see GPTConfig.from_dict",
        )
        # the bank's GPT facts come from here; the resolved config is what to_dict() records
        adapter_map = self.layer_tie_map if self.layer_tie_groups else None
        resolved = self.bank.with_gpt_fields(
            model_dim=self.model_dim,
            num_layers=L,
            flag_block_size=self.block_size,
            eod_token_id=self.eod_token_id,
            adapter_layer_map=adapter_map,
        )
        object.__setattr__(self, "bank", resolved)  # frozen dataclass: set once, here
        need(
            resolved.expert_layer_map is None,
            "bank.expert_layer_map is set from ffn='layer_moe'; leave it unset in [model.bank] and set "
            "model.ffn instead",
        )
        if self.ffn == "layer_moe" and self.layer_moe_match == "total":
            self._check_total_match()

    def _check_total_match(self) -> None:
        """'total' splits the bank's E experts over the G expert groups: E/G each, at least top-k."""
        E, G, k = self.bank.num_experts, self.expert_groups, self.bank.topk
        if E % G == 0 and k <= E // G:
            return
        fits = ", ".join(str(G * n) for n in range(k, k + 3))
        depths = [str(g) for g in range(1, E + 1) if E % g == 0 and E // g >= k]
        depth_text = depths[0] if len(depths) == 1 else f"{', '.join(depths[:-1])} or {depths[-1]}"
        raise ValueError(
            f"GPTConfig: layer_moe_match='total' splits the bank's num_experts={E} evenly over the {G} "
            f"expert groups (one per layer, or per tie group), at least topk={k} each, and {E} does not "
            f"split that way. Use bank.num_experts = {fits}, ... (a multiple of {G}), num_layers = "
            f"{depth_text} (without tie groups), or layer_moe_match='active'"
        )

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

    @property
    def expert_groups(self) -> int:
        """G, the sets of experts the model holds: 1 for the shared bank, one per layer for layer_moe (one per
        tie group when layers are tied: tied layers share attention and adapters, and so their experts too),
        0 for dense."""
        if self.ffn == "bank":
            return 1
        if self.ffn == "dense":
            return 0
        return len(set(self.layer_tie_map))

    @property
    def experts_per_layer(self) -> int:
        """Experts each layer's router chooses among (the length of every per-expert vector of a layer's
        routing metrics): the bank's E, or E/G for layer_moe matched on total parameters; 0 for dense."""
        if self.ffn == "dense":
            return 0
        if self.ffn == "layer_moe" and self.layer_moe_match == "total":
            return self.bank.num_experts // self.expert_groups
        return self.bank.num_experts

    @cached_property
    def ffn_bank(self) -> BankConfig | None:
        """The config of the expert module the model builds: the bank itself, the bank's options with
        ``experts_per_layer`` experts per group and a layer -> group map for layer_moe, or None (dense)."""
        if self.ffn == "dense":
            return None
        if self.ffn == "bank":
            return self.bank
        owners = self.layer_tie_map
        group_of_owner = {o: g for g, o in enumerate(dict.fromkeys(owners))}
        return replace(
            self.bank,
            num_experts=self.experts_per_layer,
            expert_layer_map=tuple(group_of_owner[o] for o in owners),
        )

    def value_embed_layers(self) -> list[int | None]:
        """Per layer, the value-embedding table it mixes in (None: none): the first n and last n layers use
        tables 0..n-1 in order (reference layout), padded or truncated to num_layers."""
        n, L = self.num_value_embeds, self.num_layers
        if n == 0:
            return [None] * L
        layout: list[int | None] = [*range(n), *([None] * max(L - 2 * n, 0)), *range(n)]
        return (layout + [None] * L)[:L]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the bank as a nested dict); :meth:`from_dict` rebuilds an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """The config a :meth:`to_dict` dict (or its JSON round trip: lists for tuples) describes."""
        bank = values.get("bank", {})
        out = {k: _tuples(v) for k, v in values.items() if k != "bank"}
        return cls(
            **out,
            bank=bank
            if isinstance(bank, BankConfig)
            else BankConfig(**{k: _tuples(v) for k, v in bank.items()}),
        )

    def with_(self, **changes: Any) -> GPTConfig:
        """A copy with ``changes``; the bank's GPT fields follow the new GPT values."""
        bank = changes.pop("bank", self.bank.without_gpt_fields())
        return replace(self, bank=bank, **changes)

    # ------------------------------------------------------------------------------------------ presets
    @classmethod
    def record(cls, **overrides: Any) -> GPTConfig:
        """The record's model (28 layers, d=896, 8 experts of 1024, top-1; 282,395,148 parameters;
        docs/design/presets.md)."""
        return cls(**_with_bank_options(BankConfig(), overrides))

    @classmethod
    def tiny(cls, **overrides: Any) -> GPTConfig:
        """A CPU-sized model for tests and examples (4 layers, d=32, 4 experts of 64, blocks of 16 tokens).

        In both presets ``bank`` may be a BankConfig or a dict of BankConfig fields applied on top of the
        preset's bank (``GPTConfig.tiny(bank={"topk": 2})``)."""
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
        )
        kw.update(overrides)
        tiny_bank = BankConfig(num_experts=4, ffn_hidden=64, topk=1, ema_window_rev=8, first_doc_tokens=8)
        return cls(**_with_bank_options(tiny_bank, kw))


def _with_bank_options(preset_bank: BankConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with ``bank`` as a BankConfig: the preset's, or the preset's with a dict applied."""
    bank = overrides.get("bank", {})
    if not isinstance(bank, BankConfig):
        bank = replace(preset_bank, **bank)
    return {**overrides, "bank": bank}


def _tuples(value: Any) -> Any:
    """Lists (from JSON or TOML) back to the tuples the config fields hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
