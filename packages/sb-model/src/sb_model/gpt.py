"""The SwitchBank GPT (spec 2.2, 2.6, 2.10, 2.11): embeddings, L blocks that share one expert bank,
U-net style
skips, the soft-capped head and the loss.

Per forward the model builds, from the token ids only: document ids and the attention masks (long and short
windows), the router flag features, and the bank's routing context. Schedule values are tensors held by the
model (``routing_schedule``, ``window_blocks``), updated in place by the trainer, so a compiled model never
recompiles when they change.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb_model.attention import CausalSelfAttention, KVCache, rms_norm
from sb_model.attention_masks import (
    FLEX_AVAILABLE,
    block_layout,
    dense_attention_mask,
    document_causal_window_mask,
    document_ids,
    flex_block_mask,
)
from sb_model.bank import SharedExpertBank
from sb_model.block import Block, DenseFFN
from sb_model.decode_cache import DecodeState, LayerCache, RouterFeatureHistory
from sb_model.experts import init_linear_
from sb_model.gpt_config import GPTConfig
from sb_model.rotary import Rotary
from sb_model.router_features import build_router_flags, document_starts
from sb_model.schedules import RoutingSchedule, active_expert_mask, layer_multipliers


class GPTOutput(NamedTuple):
    logits: Tensor | None  # (B, T, vocab_size) float32, soft-capped (None when only the loss was asked for)
    loss: Tensor | None  # training: CE + Σ aux; eval: CE (None without targets)
    ce_loss: Tensor | None
    aux_loss: Tensor  # Σ over layers of the bank's aux loss


class AttentionMasks(NamedTuple):
    long: object  # BlockMask or (B, 1, Tq, Tk) bool tensor
    short: object


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.config = cfg = config
        L, d, V = cfg.num_layers, cfg.model_dim, cfg.padded_vocab_size
        kw = {"dtype": dtype, "device": device}
        self.embed = nn.Embedding(V, d, **kw)
        self.value_embeds = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, d, **kw) for _ in range(cfg.num_value_embeds)
        )
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, device=device)
        # attention: one module per tie-group owner, shared by the group's layers
        owners = cfg.layer_tie_map
        attn_by_owner: dict[int, CausalSelfAttention] = {}
        for i in range(L):
            if i not in cfg.skip_attn_layers and owners[i] not in attn_by_owner:
                attn_by_owner[owners[i]] = CausalSelfAttention(d, cfg.head_dim, scale=cfg.attn_scale, **kw)
        self.bank = SharedExpertBank(cfg.bank_config(), **kw) if cfg.ffn == "bank" else None
        boost = cfg.router_boost_decay_scale
        temp_mult = layer_multipliers(
            L, boost * cfg.router_temp_boost, cfg.router_boost_shape, cfg.router_layer_peak_frac
        )
        lb_mult = layer_multipliers(
            L, boost * cfg.router_lb_boost, cfg.router_boost_shape, cfg.router_layer_peak_frac
        )
        long_layers = set(cfg.long_layers)
        self.blocks = nn.ModuleList(
            Block(
                i,
                None if i in cfg.skip_attn_layers else attn_by_owner[owners[i]],
                long_window=i in long_layers,
                temp_mult=float(temp_mult[i]),
                lb_mult=float(lb_mult[i]),
                dense_ffn=DenseFFN(d, cfg.ffn_hidden * cfg.topk, **kw) if cfg.ffn == "dense" else None,
            )
            for i in range(L)
        )
        # scalars: [0, L) skip weights, [L, 3L) residual lambdas (λ_x, λ_x0), [3L, 5L) value
        # lambdas (λ_v, λ_ve)
        self.scalars = nn.Parameter(torch.empty(5 * L, dtype=torch.float32, device=device))
        self.lm_head = None
        if not cfg.tie_lm_head or cfg.untie_lm_head_later:
            self.lm_head = nn.Parameter(torch.empty(V, d, **kw))
        self._ve_layers = cfg.value_embed_layers()
        self._skips = cfg.skip_connections
        # schedule tensors (set in place by the trainer; never recompile)
        self.register_buffer(
            "window_blocks",
            torch.tensor(cfg.max_window_tokens // cfg.block_size, dtype=torch.int32, device=device),
            persistent=False,
        )
        E = cfg.num_experts
        self.register_buffer("sched_temperature", torch.ones((), device=device), persistent=False)
        self.register_buffer("sched_logit_cap", torch.zeros((), device=device), persistent=False)
        self.register_buffer("sched_gumbel", torch.zeros((), device=device), persistent=False)
        self.register_buffer("sched_active_mask", active_expert_mask(E, E, device), persistent=False)
        self.register_buffer("sched_temp_mult", temp_mult.to(device), persistent=False)
        self.register_buffer("sched_lb_mult", lb_mult.to(device), persistent=False)
        self.register_buffer(
            "sched_router_frozen", torch.zeros((), dtype=torch.bool, device=device), persistent=False
        )
        self.register_buffer(
            "sched_adapters_frozen", torch.zeros((), dtype=torch.bool, device=device), persistent=False
        )
        # untie state: set by untie_lm_head(); the buffer makes it survive a checkpoint (see the load hook)
        self.register_buffer("lm_head_copied", torch.zeros((), dtype=torch.bool, device=device))
        self._head_untied = not cfg.tie_lm_head
        self.register_load_state_dict_post_hook(_read_head_tying)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        L = self.config.num_layers
        self.embed.weight.normal_()
        for ve in self.value_embeds:
            ve.weight.normal_()
        self.scalars[:L].fill_(1.0)
        self.scalars[L : 3 * L].copy_(torch.tensor([1.0, 0.0]).repeat(L))
        self.scalars[3 * L :].fill_(0.5)
        if self.lm_head is not None:
            init_linear_(self.lm_head)

    # ----------------------------------------------------------------------------------------- schedules
    @property
    def routing_schedule(self) -> RoutingSchedule:
        """The routing schedule tensors of this model (shared with its buffers: ``set_`` updates
        the model)."""
        return RoutingSchedule(
            temperature=self.sched_temperature,
            logit_cap=self.sched_logit_cap,
            gumbel=self.sched_gumbel,
            active_mask=self.sched_active_mask,
            temp_mult=self.sched_temp_mult,
            lb_mult=self.sched_lb_mult,
            router_frozen=self.sched_router_frozen,
            adapters_frozen=self.sched_adapters_frozen,
        )

    @torch.no_grad()
    def set_window_blocks(self, long_blocks: int) -> None:
        """Long attention window in blocks (a schedule value the trainer sets); the short one is half."""
        if long_blocks < 0:
            raise ValueError(f"window size must be >= 0 blocks (got {long_blocks})")
        self.window_blocks.fill_(int(long_blocks))

    @torch.no_grad()
    def untie_lm_head(self) -> None:
        """Give a tied head its own weights from now on: the first call copies the embedding into
        ``lm_head``, later calls do nothing. The trainer calls it when its schedule says so; a checkpoint
        keeps the untied state. Needs ``untie_lm_head_later`` (which allocates ``lm_head``). Flipping it
        recompiles a compiled model once."""
        if self._head_untied:
            return
        if self.lm_head is None:
            raise RuntimeError("untie_lm_head() needs a model built with untie_lm_head_later=True")
        self.lm_head.copy_(self.embed.weight)
        self.lm_head_copied.fill_(True)
        self._head_untied = True

    @property
    def head_weight(self) -> Tensor:
        if self._head_untied:
            assert self.lm_head is not None
            return self.lm_head
        return self.embed.weight

    # ----------------------------------------------------------------------------------------- forward
    def _use_flex(self, attention: str | None, device: torch.device) -> bool:
        mode = attention or self.config.attention
        if mode == "flex":
            if not FLEX_AVAILABLE:
                raise RuntimeError(
                    "attention='flex' but FlexAttention is not in this torch build; use 'sdpa'"
                )
            return True
        if mode == "sdpa":
            return False
        # auto: FlexAttention where it runs fused and differentiable: CUDA, or CPU inference under
        # torch.compile
        # (FlexAttention has no CPU backward); SDPA with the explicit mask everywhere else
        if not FLEX_AVAILABLE:
            return False
        if device.type == "cuda":
            return True
        return device.type == "cpu" and torch.compiler.is_compiling() and not torch.is_grad_enabled()

    def attention_masks(self, tokens: Tensor, attention: str | None = None) -> AttentionMasks:
        cfg = self.config
        docs = document_ids(tokens, cfg.eod_token_id)
        w_long = self.window_blocks
        w_short = torch.div(w_long, 2, rounding_mode="floor")
        if self._use_flex(attention, tokens.device):
            layout = block_layout(docs, cfg.block_size)
            return AttentionMasks(
                flex_block_mask(layout, docs, w_long, cfg.block_size),
                flex_block_mask(layout, docs, w_short, cfg.block_size),
            )
        return AttentionMasks(
            dense_attention_mask(docs, w_long, cfg.block_size),
            dense_attention_mask(docs, w_short, cfg.block_size),
        )

    def _flags(self, tokens: Tensor, dtype: torch.dtype) -> Tensor:
        cfg = self.config
        return build_router_flags(
            tokens,
            eod_token_id=cfg.eod_token_id,
            first_doc_tokens=cfg.first_doc_tokens,
            block_pos_bins=cfg.router_block_pos_bins,
            block_size=cfg.block_size,
            dtype=dtype,
        )

    def _check_tokens(self, idx: Tensor) -> Tensor:
        tokens = idx[None] if idx.dim() == 1 else idx
        if tokens.dim() != 2:
            raise ValueError(f"input ids must have shape (T,) or (B, T), got {tuple(idx.shape)}")
        if tokens.dtype.is_floating_point:
            raise TypeError(f"input ids must be an integer tensor, got {tokens.dtype}")
        return tokens

    def _stack(
        self, tokens: Tensor, masks: AttentionMasks, flags: Tensor, state: DecodeState | None
    ) -> tuple[Tensor, Tensor]:
        L = self.config.num_layers
        x0 = rms_norm(self.embed(tokens))
        x = x0
        ctx = self.bank.context(flags, self.routing_schedule) if self.bank is not None else None
        tables = [ve(tokens) for ve in self.value_embeds]
        sc = self.scalars
        aux = torch.zeros((), device=tokens.device, dtype=torch.float32)
        outputs: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            src = self._skips.get(i)
            if src is not None:
                x = x + sc[src] * outputs[src]
            j = self._ve_layers[i]
            x, a = block(
                x,
                x0,
                None if j is None else tables[j],
                sc[L + 2 * i : L + 2 * i + 2],
                sc[3 * L + 2 * i : 3 * L + 2 * i + 2],
                masks,
                self.rotary,
                self.bank,
                ctx,
                None if state is None else state.layers[i],
            )
            aux = aux + a.float()
            outputs.append(x)
        return rms_norm(x), aux

    def _logits(self, x: Tensor) -> Tensor:
        z = F.linear(x, self.head_weight.type_as(x)).float()
        cap = self.config.logit_softcap
        if cap > 0:
            z = cap * z * torch.rsqrt(z.square() + cap * cap)  # ISRU soft cap into (-cap, cap)
        return z

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        return_logits: bool | None = None,
        attention: str | None = None,
    ) -> GPTOutput:
        """idx: (B, T) or (T,) token ids; targets: same shape (ignore_index -100). Returns a
        :class:`GPTOutput`.

        ``return_logits`` defaults to True without targets and False with them (the loss alone avoids handing
        back a (B, T, vocab) tensor). ``attention`` overrides the config's backend for this call."""
        cfg = self.config
        tokens = self._check_tokens(idx)
        masks = self.attention_masks(tokens, attention)
        x, aux = self._stack(tokens, masks, self._flags(tokens, self.embed.weight.dtype), None)
        logits = self._logits(x)
        ce = loss = None
        if targets is not None:
            tgt = targets.reshape(tokens.shape)
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.reshape(-1).long())
            loss = ce + aux if self.training else ce
        if return_logits is None:
            return_logits = targets is None
        return GPTOutput(logits[..., : cfg.vocab_size] if return_logits else None, loss, ce, aux)

    # ----------------------------------------------------------------------------------------- decoding
    def new_decode_state(self, batch: int, max_len: int) -> DecodeState:
        """Empty caches for decoding up to ``max_len`` positions per row."""
        cfg = self.config
        if max_len > cfg.max_seq_len:
            raise ValueError(f"decoding {max_len} positions exceeds max_seq_len={cfg.max_seq_len}")
        dev, dt = self.embed.weight.device, self.embed.weight.dtype
        features = RouterFeatureHistory() if self.bank is not None else None
        layers = [
            LayerCache(
                None
                if b.attn is None
                else KVCache(batch, cfg.num_heads, cfg.head_dim, max_len, dtype=dt, device=dev),
                features,
            )
            for b in self.blocks
        ]
        return DecodeState(layers, torch.zeros(batch, 0, dtype=torch.long, device=dev), features)

    @torch.no_grad()
    def decode(self, new_tokens: Tensor, state: DecodeState) -> Tensor:
        """Run the new positions ``new_tokens`` (B, n) against the cached past; returns their logits
        (B, n, vocab_size). Uses the explicit-mask SDPA path (the masks are rectangular)."""
        cfg = self.config
        new_tokens = self._check_tokens(new_tokens)
        offset = state.length
        tokens = torch.cat([state.tokens, new_tokens.to(state.tokens.dtype)], dim=1)
        state.tokens = tokens
        T = tokens.shape[1]
        docs = document_ids(tokens, cfg.eod_token_id)
        pos = torch.arange(T, device=tokens.device)
        w_long = self.window_blocks
        w_short = torch.div(w_long, 2, rounding_mode="floor")
        masks = AttentionMasks(
            *(
                document_causal_window_mask(docs[:, offset:], docs, pos[offset:], pos, w, cfg.block_size)
                for w in (w_long, w_short)
            )
        )
        if state.features is not None:
            state.features.doc_start = document_starts(tokens, cfg.eod_token_id)
        flags = self._flags(tokens, self.embed.weight.dtype)[:, offset:]
        x, _ = self._stack(new_tokens, masks, flags, state)
        return self._logits(x)[..., : cfg.vocab_size]

    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        **kwargs,
    ) -> Tensor:
        """See :func:`sb_model.generation.generate`."""
        from sb_model.generation import generate

        return generate(self, prompt_ids, max_new_tokens, temperature, top_k, **kwargs)

    # ----------------------------------------------------------------------------------------- accounting
    def parameter_counts(self) -> dict[str, int]:
        """Unique parameters by category (spec 1.3): attention, experts, routers, ffn_bank (=
        experts + routers),
        dense_ffn, token_embed, value_embeds, embeddings, lm_head, adapters, scalars, other, total."""
        seen: set[int] = set()

        def count(params) -> int:
            n = 0
            for p in params:
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
            return n

        out: dict[str, int] = {}
        out["attention"] = count(b.attn.qkvo_w for b in self.blocks if b.attn is not None)
        bank = self.bank
        out["experts"] = count([bank.w1, bank.w2]) if bank is not None else 0
        out["routers"] = count([bank.router_w, bank.router_b]) if bank is not None else 0
        out["ffn_bank"] = out["experts"] + out["routers"]
        out["dense_ffn"] = count(
            p for b in self.blocks if b.dense_ffn is not None for p in b.dense_ffn.parameters()
        )
        out["token_embed"] = count([self.embed.weight])
        out["value_embeds"] = count(ve.weight for ve in self.value_embeds)
        out["embeddings"] = out["token_embed"] + out["value_embeds"]
        out["lm_head"] = count([self.lm_head])
        out["adapters"] = count([bank.adapter_scale, bank.adapter_bias]) if bank is not None else 0
        out["scalars"] = count([self.scalars])
        out["other"] = count(self.parameters())
        out["total"] = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        return out

    def format_parameter_counts(self) -> str:
        """The reference's printed block (spec 1.3), values as ``n:, (n/1e6:.3f M)``."""
        c = self.parameter_counts()
        cfg = self.config
        f = lambda n: f"{n:,} ({n / 1e6:.3f}M)"  # noqa: E731
        n_attn = sum(b.attn is not None for b in self.blocks)
        lines = [
            "=== Parameter counts ===",
            f"model total: {f(c['total'])}",
            f"attention stack ({n_attn} of {cfg.num_layers} layers run attention): {f(c['attention'])}",
        ]
        if self.bank is not None:
            lines += [
                f"FFN bank total: {f(c['ffn_bank'])}",
                f"  ├─ experts W1/W2: {f(c['experts'])}",
                f"  └─ routers: {f(c['routers'])}",
            ]
        else:
            lines.append(f"dense FFNs: {f(c['dense_ffn'])}")
        lines += [
            f"embeddings (tok + {cfg.num_value_embeds}× value): {f(c['embeddings'])}",
            f"  └─ token embed: {f(c['token_embed'])}",
            f"  └─ value embeds: {f(c['value_embeds'])}",
            f"lm head ({'untied' if self.lm_head is not None else 'tied'}): {f(c['lm_head'])}",
            f"adapters: {f(c['adapters'])}",
            f"scalars: {f(c['scalars'])}",
        ]
        if c["other"]:
            lines.append(f"other (unclassified): {f(c['other'])}")
        return "\n".join(lines)


def _read_head_tying(model: GPT, incompatible_keys: object) -> None:
    """After ``load_state_dict``: the head is untied iff the model is untied by construction or the loaded
    state says ``untie_lm_head()`` ran."""
    model._head_untied = not model.config.tie_lm_head or bool(model.lm_head_copied)
