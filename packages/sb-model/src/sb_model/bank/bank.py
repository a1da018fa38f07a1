"""The shared expert bank: E ReLU² experts used by all L layers, one router per layer (docs/design/bank.md).

With ``BankConfig.expert_layer_map`` the same module is the per-layer MoE baseline: G expert groups of E
experts each, stacked along the expert dimension, and each layer routes only to its own group's experts
(docs/design/model.md, per-layer MoE baseline).

A block calls ``bank(x_norm, layer_idx, ctx)`` with the normed residual and a per-forward
:class:`~sb_model.bank.router.RoutingContext` (built once by the GPT with :meth:`SharedExpertBank.context`);
it gets back the bank output and the layer's aux loss. One call reads top to bottom: router features and
logits (:mod:`.router`), routing decisions (:mod:`.routing`), dispatch (:mod:`.dispatch`), the experts
(:mod:`.experts`), the aux loss (:mod:`.aux_losses`) and the metrics (:mod:`.metrics`). Nothing in the forward
or backward reads a tensor on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sb_model.bank.aux_losses import layer_aux_loss
from sb_model.bank.config import BankConfig
from sb_model.bank.dispatch import build_dispatch, capacity_for, is_bijection, position_major_priority
from sb_model.bank.experts import choose_expert_impl, expert_outputs, probe_cpu_grouped_mm
from sb_model.bank.features import starts_from_flags
from sb_model.bank.metrics import RouterMetrics, RoutingReport, call_statistics
from sb_model.bank.router import RoutingContext, router_inputs, router_logits
from sb_model.bank.routing import Routing, decide
from sb_model.functional import init_linear_
from sb_model.kernels import cpu_parallel_experts_available
from sb_model.schedule_tensors import RoutingSchedule, layer_multipliers


def layer_boosts(config: BankConfig) -> tuple[Tensor, Tensor]:
    """(temp_mult, lb_mult), each (L,): the per-layer temperature and load-balance multipliers
    1 + boost · shape(layer position) (docs/design/model.md, layer boosts)."""
    scale, L = config.boost_decay_scale, config.num_layers
    assert L is not None
    return (
        layer_multipliers(L, scale * config.temp_boost, config.boost_shape, config.boost_peak_frac),
        layer_multipliers(L, scale * config.lb_boost, config.boost_shape, config.boost_peak_frac),
    )


class SharedExpertBank(nn.Module):
    """One bank of FFN experts shared by all layers, with per-layer routers and adapters; or, with an expert
    layer map, G groups of experts where layer l sees only group ``expert_group(l)``. ``w1`` (G·E, h, d) and
    ``w2`` (G·E, d, h) stack group g's experts at rows g·E … g·E + E − 1."""

    def __init__(self, config: BankConfig, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        config.require_gpt_fields()
        self.config = cfg = config
        E, L, d, h = cfg.num_experts, cfg.num_layers, cfg.model_dim, cfg.ffn_hidden
        G = cfg.num_expert_groups
        kw = {"dtype": dtype, "device": device}
        self.w1 = nn.Parameter(torch.empty(G * E, h, d, **kw))
        self.w2 = nn.Parameter(torch.empty(G * E, d, h, **kw))
        self.w1.wd_mul = 2.0  # per-parameter weight-decay multiplier read by the optimizer setup
        self.w2.wd_mul = 2.0
        self.router_w = nn.Parameter(torch.empty(L, E, cfg.router_in_dim, **kw))
        self.router_b = nn.Parameter(torch.empty(L, E, **kw))
        if cfg.use_adapters:
            S = cfg.num_adapter_slots
            self.adapter_scale = nn.Parameter(torch.empty(S, E, d, **kw))
            self.adapter_bias = nn.Parameter(torch.empty(S, E, d, **kw))
            self.register_buffer("adapter_initialized", torch.zeros(S, E, dtype=torch.bool, device=device))
        else:
            self.adapter_scale = None
            self.adapter_bias = None
        self.register_buffer("ema_alpha_fwd", torch.full((L,), cfg.ema_alpha_fwd, device=device))
        self.register_buffer("ema_alpha_rev", torch.full((L,), cfg.ema_alpha_rev, device=device))
        self.metrics = RouterMetrics(L, E).to(device)
        self.reset_parameters()
        probe_cpu_grouped_mm()
        cpu_parallel_experts_available()  # probed eagerly: compiled code only reads the answer

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        init_linear_(self.w1, cfg.model_dim)
        self.w2.zero_()
        init_linear_(self.router_w, cfg.router_in_dim)
        self.router_b.zero_()
        if self.adapter_scale is not None:
            self.adapter_scale.fill_(1.0)
            self.adapter_bias.zero_()
            self.adapter_initialized.zero_()

    # ----------------------------------------------------------------------------------------- per forward
    def default_schedule(self, **values) -> RoutingSchedule:
        """A :class:`RoutingSchedule` of this bank's sizes on its device (keyword values as in ``create``)."""
        return RoutingSchedule.create(
            self.config.num_layers, self.config.num_experts, device=self.w1.device, **values
        )

    def context(self, flags: Tensor, schedule: RoutingSchedule | None = None) -> RoutingContext:
        """Start a forward: ``flags`` from :func:`~sb_model.bank.router.router_flags`."""
        cfg = self.config
        if flags.dim() != 3 or flags.shape[-1] != cfg.num_flag_features:
            raise ValueError(
                f"flags must have shape (B, T, {cfg.num_flag_features}) (3 + block_pos_bins); got "
                f"{tuple(flags.shape)}. Build them with sb_model.bank.features.build_router_flags(tokens, "
                f"block_pos_bins={cfg.block_pos_bins})"
            )
        sched = self.default_schedule() if schedule is None else schedule
        if sched.active_mask.shape != (cfg.num_experts,) or sched.temp_mult.shape != (cfg.num_layers,):
            raise ValueError(
                f"schedule was built for other sizes: active_mask {tuple(sched.active_mask.shape)}, "
                f"temp_mult {tuple(sched.temp_mult.shape)}; expected ({cfg.num_experts},) and "
                f"({cfg.num_layers},)"
            )
        return RoutingContext(flags=flags, doc_start=starts_from_flags(flags), schedule=sched)

    def router_logits(
        self, x: Tensor, layer_idx: int, flags: Tensor, ema_fwd: Tensor | None, ema_rev: Tensor | None
    ) -> Tensor:
        """(B*T, E) float32 = [x, ema_fwd, ema_rev, flags] · W_lᵀ + b_l, a product per feature (no concat)."""
        return router_logits(
            self.config, self.router_w[layer_idx], self.router_b[layer_idx], x, flags, ema_fwd, ema_rev
        )

    def route(self, x: Tensor, layer_idx: int, ctx: RoutingContext) -> Routing:
        """Layer ``layer_idx``'s routing decisions for its normed input ``x`` (B, T, d)."""
        ema_fwd, ema_rev, rev_plan = router_inputs(
            self.config, x, layer_idx, ctx, self.ema_alpha_fwd, self.ema_alpha_rev
        )
        raw = router_logits(
            self.config,
            self.router_w[layer_idx],
            self.router_b[layer_idx],
            x,
            ctx.flags,
            ema_fwd,
            ema_rev,
            rev_plan,
            layer_idx,
        )
        return decide(raw, self.config, ctx.schedule, layer_idx, training=self.training)

    def forward(self, x: Tensor, layer_idx: int, ctx: RoutingContext) -> tuple[Tensor, Tensor]:
        """x: (B, T, d) normed input of layer ``layer_idx``. Returns (y (B, T, d), aux loss ())."""
        cfg = self.config
        self._check_input(x, layer_idx, ctx)
        B, T, d = x.shape
        N, E, k = B * T, cfg.num_experts, cfg.topk
        r = self.route(x, layer_idx, ctx)

        impl, align = choose_expert_impl(cfg, x, self.w1.dtype)
        capacity = capacity_for(N, k, E, cfg.capacity_factor)
        priority = position_major_priority(B, T, k, x.device)
        disp = build_dispatch(r.topk_idx, r.valid, priority, E, capacity=capacity, align=align)
        gate = torch.where(disp.served, r.gates, torch.zeros_like(r.gates)).to(self.w1.dtype)
        scale, bias = self._adapter_params(layer_idx, ctx.schedule)
        bijection = is_bijection(k, capacity, align)
        w1, w2 = self.expert_weights(layer_idx)
        y = expert_outputs(impl, align, x.reshape(N, d), disp, bijection, gate, w1, w2, scale, bias)
        y = y.view(B, T, d).to(x.dtype)

        if ctx.trace is not None:
            ctx.trace.record(
                layer_idx, r.topk_idx.view(B, T, k), gate.view(B, T, k), disp.served.view(B, T, k)
            )
        aux, z = layer_aux_loss(cfg, r, disp.demanded_counts, layer_idx, ctx.schedule)
        if cfg.collect_metrics:
            scalars, vectors = call_statistics(
                probs=r.probs,
                logits=r.logits,
                topk_idx=r.topk_idx,
                valid=r.valid,
                live=r.live,
                n_live=r.n_live,
                demanded_counts=disp.demanded_counts,
                served_counts=disp.served_counts,
                aux=aux,
                z_loss=z,
            )
            self.metrics.record(layer_idx, scalars, vectors)
        return y, aux

    def expert_weights(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        """(w1 (E, h, d), w2 (E, d, h)) of the experts layer ``layer_idx`` routes to: the whole bank, or its
        expert group's rows (a view; ``layer_idx`` is a Python int, so the slice is static when compiled)."""
        if self.config.num_expert_groups == 1:
            return self.w1, self.w2
        E = self.config.num_experts
        at = self.config.expert_group(layer_idx) * E
        return self.w1[at : at + E], self.w2[at : at + E]

    def _check_input(self, x: Tensor, layer_idx: int, ctx: RoutingContext) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.model_dim:
            raise ValueError(
                f"bank input must have shape (B, T, model_dim={cfg.model_dim}); got {tuple(x.shape)}"
            )
        if not 0 <= layer_idx < cfg.num_layers:
            raise IndexError(f"layer_idx {layer_idx} out of range for a bank of num_layers={cfg.num_layers}")
        if ctx.flags.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"flags cover {tuple(ctx.flags.shape[:2])} tokens but x has (B, T)={tuple(x.shape[:2])}; "
                "build the context from the same tokens"
            )

    # ----------------------------------------------------------------------------------------- adapters
    def _adapter_params(self, layer_idx: int, sched: RoutingSchedule) -> tuple[Tensor | None, Tensor | None]:
        """(scale, bias), each (E, d), of this layer's adapter slot (detached while adapters are frozen), or
        (None, None) without adapters. An expert e's input rows become ``bias[e] + rows * scale[e]``."""
        if self.adapter_scale is None or self.adapter_bias is None:
            return None, None
        slot = self.config.adapter_slot(layer_idx)
        scale, bias = self.adapter_scale[slot], self.adapter_bias[slot]
        frozen = sched.adapters_frozen
        return torch.where(frozen, scale.detach(), scale), torch.where(frozen, bias.detach(), bias)

    @torch.no_grad()
    def maybe_init_adapters(self, active_mask: Tensor | None = None) -> None:
        """Give every adapter slot of a newly active expert the mean adapter of the active experts already
        initialised (docs/design/bank.md, adapters). Tensor ops only: safe to call every step, no host
        sync."""
        if self.adapter_scale is None:
            return
        E = self.config.num_experts
        device = self.adapter_initialized.device
        init_mask = torch.ones(E, dtype=torch.bool, device=device) if active_mask is None else active_mask
        init_mask = init_mask.to(device)
        done = self.adapter_initialized
        to_init = init_mask[None, :] & ~done
        sources = init_mask[None, :] & done
        n_src = sources.sum(dim=1, keepdim=True)
        fill = to_init & (n_src > 0)
        for p in (self.adapter_scale, self.adapter_bias):
            mean = (p.float() * sources[..., None]).sum(dim=1) / n_src.clamp(min=1)
            p.copy_(torch.where(fill[..., None], mean[:, None, :].to(p.dtype), p))
        done |= to_init

    def read_metrics(self, reset: bool = True) -> RoutingReport:
        """Per-layer and summary routing metrics since the last read: one device-to-host copy."""
        return self.metrics.read(self.router_w, self.config.feature_slices, reset=reset)
