"""The SwitchBank GPT, read top to bottom: construction, then forward = embed -> blocks -> head -> loss.

Embeddings, L blocks that share one expert bank (or, as baselines, own experts or a dense FFN each: ``ffn``),
U-net style skips, the soft-capped head and the loss
(docs/design/model.md). Per forward the model builds, from the token ids only, the attention masks (long and
short windows) and the router flag features. Schedule values are tensors held by the model
(``routing_schedule``, ``window_blocks``), updated in place by the trainer, so a compiled model never
recompiles when they change. Decoding lives in :mod:`sb_model.generation`, parameter accounting in
:mod:`sb_model.parameter_counts`, mask building in :mod:`sb_model.attention_masks`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb_model import generation, parameter_counts
from sb_model.attention import CausalSelfAttention
from sb_model.attention_masks import AttentionMasks, sequence_masks, use_flex_attention
from sb_model.bank.bank import SharedExpertBank, layer_boosts
from sb_model.bank.router import router_flags
from sb_model.bank.trace import RoutingTrace
from sb_model.block import Block, DenseFFN
from sb_model.functional import init_linear_, rms_norm
from sb_model.generation import DecodeState, LayerCache
from sb_model.gpt_config import GPTConfig
from sb_model.rotary import Rotary
from sb_model.schedule_tensors import TENSOR_FIELDS, RoutingSchedule

_SCHEDULE_TENSORS = TENSOR_FIELDS  # each held as buffer ``sched_<name>``


class GPTOutput(NamedTuple):
    logits: Tensor | None  # (B, T, vocab_size) float32, soft-capped (None when only the loss was asked for)
    loss: Tensor | None  # training: CE + Σ aux; eval: CE (None without targets)
    ce_loss: Tensor | None
    aux_loss: Tensor  # Σ over layers of the bank's aux loss


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
        # the shared bank, or for layer_moe the same module with one expert group per layer (tie group)
        self.bank = SharedExpertBank(cfg.ffn_bank, **kw) if cfg.ffn_bank is not None else None
        dense_hidden = cfg.bank.topk * cfg.bank.ffn_hidden  # a dense baseline has the bank's active size
        long_layers = set(cfg.long_layers)
        self.blocks = nn.ModuleList(
            Block(
                i,
                None if i in cfg.skip_attn_layers else attn_by_owner[owners[i]],
                long_window=i in long_layers,
                dense_ffn=DenseFFN(d, dense_hidden, **kw) if cfg.ffn == "dense" else None,
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
        # schedule tensors (set in place by the trainer; never recompile): window and routing schedule
        self.register_buffer(
            "window_blocks",
            torch.tensor(cfg.max_window_tokens // cfg.block_size, dtype=torch.int32, device=device),
            persistent=False,
        )
        temp_mult, lb_mult = layer_boosts(cfg.bank)
        # active-expert counts stay in the bank's terms (of bank.num_experts); a router with fewer experts
        # (layer_moe, 'total') turns on the same fraction of its own
        schedule = RoutingSchedule.create(
            L,
            cfg.experts_per_layer or cfg.bank.num_experts,
            temp_mult=temp_mult,
            lb_mult=lb_mult,
            counts_out_of=cfg.bank.num_experts,
            device=device,
        )
        for name in _SCHEDULE_TENSORS:
            self.register_buffer(f"sched_{name}", getattr(schedule, name), persistent=False)
        # tie/untie state: the copy happens once; the buffer makes it survive a checkpoint
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
            **{name: getattr(self, f"sched_{name}") for name in _SCHEDULE_TENSORS},
            counts_out_of=self.config.bank.num_experts,
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
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        return_logits: bool | None = None,
        attention: str | None = None,
        routing_trace: RoutingTrace | None = None,
    ) -> GPTOutput:
        """idx: (B, T) or (T,) token ids; targets: same shape (ignore_index -100). Returns a
        :class:`GPTOutput`.

        ``return_logits`` defaults to True without targets and False with them (the loss alone avoids handing
        back a (B, T, vocab) tensor). ``attention`` overrides the config's backend for this call. A
        ``routing_trace`` receives every bank layer's per-token choices (:mod:`sb_model.bank.trace`)."""
        tokens = as_token_batch(idx)
        masks = self.attention_masks(tokens, attention)
        x, aux = self.run_blocks(tokens, masks, self.router_flags(tokens), trace=routing_trace)
        logits = self.head(x)
        ce = loss = None
        if targets is not None:
            tgt = targets.reshape(tokens.shape)
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.reshape(-1).long())
            loss = ce + aux if self.training else ce
        if return_logits is None:
            return_logits = targets is None
        return GPTOutput(logits[..., : self.config.vocab_size] if return_logits else None, loss, ce, aux)

    @torch.no_grad()
    def trace_routing(self, idx: Tensor, attention: str | None = None) -> RoutingTrace:
        """Every bank layer's per-token choices for ``idx`` ((B, T) or (T,)): the blocks only, no LM head
        (:mod:`sb_model.bank.trace`). The bank's metrics record the call like any forward."""
        tokens = as_token_batch(idx)
        trace = RoutingTrace()
        masks = self.attention_masks(tokens, attention)
        self.run_blocks(tokens, masks, self.router_flags(tokens), trace=trace)
        return trace

    def attention_masks(self, tokens: Tensor, attention: str | None = None) -> AttentionMasks:
        """Long- and short-window masks of ``tokens`` (B, T) for backend ``attention`` (default: config's)."""
        cfg = self.config
        flex = use_flex_attention(attention or cfg.attention, tokens.device)
        return sequence_masks(tokens, cfg.eod_token_id, self.window_blocks, cfg.block_size, flex=flex)

    def router_flags(self, tokens: Tensor) -> Tensor:
        """(B, T, 3 + bins) router flag features of ``tokens``, in the parameters' dtype."""
        return router_flags(self.config.bank, tokens, self.embed.weight.dtype)

    def run_blocks(
        self,
        tokens: Tensor,
        masks: AttentionMasks,
        flags: Tensor,
        caches: list[LayerCache] | None = None,
        trace: RoutingTrace | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed ``tokens`` and run every block: (final normed residual (B, T, d), Σ aux loss ()).
        ``caches`` (one per layer) only when decoding; ``trace`` records the routing when given."""
        L = self.config.num_layers
        x0 = rms_norm(self.embed(tokens))
        x = x0
        ctx = self.bank.context(flags, self.routing_schedule) if self.bank is not None else None
        if ctx is not None:
            ctx.trace = trace
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
                None if caches is None else caches[i],
            )
            aux = aux + a.float()
            outputs.append(x)
        return rms_norm(x), aux

    def head(self, x: Tensor) -> Tensor:
        """(B, T, padded vocab) float32 logits, soft-capped into (-cap, cap) when ``logit_softcap`` > 0."""
        z = F.linear(x, self.head_weight.type_as(x)).float()
        cap = self.config.logit_softcap
        if cap > 0:
            z = cap * z * torch.rsqrt(z.square() + cap * cap)  # ISRU soft cap into (-cap, cap)
        return z

    # ----------------------------------------------------------------------------------------- generation
    def new_decode_state(self, batch: int, max_len: int) -> DecodeState:
        """Empty caches for decoding up to ``max_len`` positions per row (see :mod:`sb_model.generation`)."""
        return generation.new_decode_state(self, batch, max_len)

    def decode(
        self, new_tokens: Tensor, state: DecodeState, routing_trace: RoutingTrace | None = None
    ) -> Tensor:
        """Logits (B, n, vocab_size) of the new positions ``new_tokens`` (B, n) against the cached past;
        ``routing_trace`` (optional) receives the new positions' routing."""
        return generation.decode(self, as_token_batch(new_tokens), state, routing_trace)

    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        **kwargs,
    ) -> Tensor:
        """See :func:`sb_model.generation.generate`."""
        return generation.generate(self, prompt_ids, max_new_tokens, temperature, top_k, **kwargs)

    # ----------------------------------------------------------------------------------------- accounting
    def parameter_counts(self) -> dict[str, int]:
        """See :func:`sb_model.parameter_counts.parameter_counts`."""
        return parameter_counts.parameter_counts(self)

    def parameter_summary(self) -> dict[str, Any]:
        """See :func:`sb_model.parameter_counts.run_header_counts` (run.json's ``ffn`` and
        ``parameter_counts``)."""
        return parameter_counts.run_header_counts(self)

    def format_parameter_counts(self) -> str:
        """See :func:`sb_model.parameter_counts.format_parameter_counts`."""
        return parameter_counts.format_parameter_counts(self)


def as_token_batch(idx: Tensor) -> Tensor:
    """Token ids as (B, T): a (T,) input gets a batch dimension; anything else is refused with the reason."""
    tokens = idx[None] if idx.dim() == 1 else idx
    if tokens.dim() != 2:
        raise ValueError(f"input ids must have shape (T,) or (B, T), got {tuple(idx.shape)}")
    if tokens.dtype.is_floating_point:
        raise TypeError(f"input ids must be an integer tensor, got {tokens.dtype}")
    return tokens


def _read_head_tying(model: GPT, incompatible_keys: object) -> None:
    """After ``load_state_dict``: the head is untied iff the model is untied by construction or the loaded
    state says ``untie_lm_head()`` ran."""
    model._head_untied = not model.config.tie_lm_head or bool(model.lm_head_copied)
