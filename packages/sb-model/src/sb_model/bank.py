"""The shared expert bank: E ReLU² experts used by all L layers, one router per layer (spec 2.8).

A block calls ``bank(x_norm, layer_idx, ctx)`` with the normed residual and a per-forward
:class:`RoutingContext` (built once by the GPT with :meth:`SharedExpertBank.context`); it gets back the
bank output and the layer's aux loss. Nothing in the forward or backward reads a tensor on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sb_model.aux_losses import reference_aux_loss, router_z_loss, switch_load_balancing_loss
from sb_model.config import BankConfig
from sb_model.cpu_parallel_experts import cpu_parallel_experts_available, expert_ffn_cpu_parallel
from sb_model.dispatch import (
    build_dispatch,
    capacity_for,
    combine_rows,
    dispatch_choice_values,
    dispatch_rows,
    index_select_rows,
    is_bijection,
    position_major_priority,
)
from sb_model.ema import (
    causal_reverse_snapshot,
    document_ema,
    reference_forward_ema,
    reverse_snapshot_plan,
)
from sb_model.experts import (
    expert_ffn_blocked,
    expert_ffn_grouped,
    grouped_mm_supported,
    init_linear_,
    probe_cpu_grouped_mm,
)
from sb_model.metrics import RouterMetrics, RoutingReport, call_statistics
from sb_model.router_features import starts_from_flags
from sb_model.routing import live_experts, route, shape_logits, sinkhorn_plan
from sb_model.schedules import RoutingSchedule


@dataclass
class RoutingContext:
    """Per-forward inputs shared by every layer's router, plus the EMA features cached per layer group."""

    flags: Tensor  # (B, T, 3 + bins)
    doc_start: Tensor  # (B, T) bool
    schedule: RoutingSchedule
    ema_cache: dict[int, tuple[Tensor | None, Tensor | None]] = field(default_factory=dict)
    # reverse snapshot as a row plan per layer group: (source rows (N, d), gather index (N,), coef (N,),
    # layer whose input is the source); the bank projects the source through the router, then gathers
    rev_plans: dict[int, tuple[Tensor, Tensor, Tensor, int]] = field(default_factory=dict)

    def ema_features(self, base: int) -> tuple[Tensor | None, Tensor | None]:
        """(forward EMA, reverse feature) of layer group ``base`` as (B, T, d) tensors, (None, None) before
        the group's first layer ran. A reverse snapshot held as a row plan is materialised here (no grad)."""
        fwd, rev = self.ema_cache.get(base, (None, None))
        plan = self.rev_plans.get(base)
        if rev is None and plan is not None and base in self.ema_cache:
            source, index, coef, _ = plan
            B, T = self.flags.shape[:2]
            with torch.no_grad():
                rev = (source.index_select(0, index).to(coef.dtype) * coef[:, None]).view(B, T, -1)
                rev = rev.to(source.dtype)
        return fwd, rev


@torch.compiler.assume_constant_result
def _cpu_parallel_pays() -> bool:
    """``expert_impl="auto"`` on a CPU: experts side by side when there are cores to spread them over and the
    OpenMP team is usable. With one thread the tasks would run one after another, and ``grouped_mm`` measured
    faster there (1.13x vs 1.23x the dense FFN, compiled). Decided when a graph is traced."""
    return torch.get_num_threads() > 1 and cpu_parallel_experts_available()


class SharedExpertBank(nn.Module):
    """One bank of FFN experts shared by all layers, with per-layer routers and adapters."""

    def __init__(self, config: BankConfig, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.config = cfg = config
        E, L, d, h = cfg.num_experts, cfg.num_layers, cfg.model_dim, cfg.ffn_hidden
        kw = {"dtype": dtype, "device": device}
        self.w1 = nn.Parameter(torch.empty(E, h, d, **kw))
        self.w2 = nn.Parameter(torch.empty(E, d, h, **kw))
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
        self.register_buffer("pruned", torch.zeros(E, dtype=torch.bool, device=device))
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
        self.pruned.zero_()

    # ----------------------------------------------------------------------------------------- per forward
    def default_schedule(self, **values) -> RoutingSchedule:
        """A :class:`RoutingSchedule` of this bank's sizes on its device (keyword values as in ``create``)."""
        return RoutingSchedule.create(
            self.config.num_layers, self.config.num_experts, device=self.w1.device, **values
        )

    def context(self, flags: Tensor, schedule: RoutingSchedule | None = None) -> RoutingContext:
        """Start a forward: ``flags`` from :func:`~sb_model.router_features.build_router_flags`."""
        cfg = self.config
        if flags.dim() != 3 or flags.shape[-1] != cfg.num_flag_features:
            raise ValueError(
                f"flags must have shape (B, T, {cfg.num_flag_features}) (3 + block_pos_bins); got "
                f"{tuple(flags.shape)}. Build them with sb_model.build_router_flags(tokens, block_pos_bins="
                f"{cfg.block_pos_bins})"
            )
        sched = self.default_schedule() if schedule is None else schedule
        if sched.active_mask.shape != (cfg.num_experts,) or sched.temp_mult.shape != (cfg.num_layers,):
            raise ValueError(
                f"schedule was built for other sizes: active_mask {tuple(sched.active_mask.shape)}, "
                f"temp_mult "
                f"{tuple(sched.temp_mult.shape)}; expected ({cfg.num_experts},) and ({cfg.num_layers},)"
            )
        return RoutingContext(flags=flags, doc_start=starts_from_flags(flags), schedule=sched)

    def _ema_features(
        self, x: Tensor, layer_idx: int, ctx: RoutingContext
    ) -> tuple[Tensor | None, Tensor | None]:
        cfg = self.config
        if not (cfg.use_forward_ema or cfg.use_reverse_ema):
            return None, None
        base = (layer_idx // cfg.layer_stride) * cfg.layer_stride
        cached = ctx.ema_cache.get(base)
        if cached is not None:
            return cached
        fwd = rev = None
        if cfg.use_forward_ema:
            fwd = reference_forward_ema(x, self.ema_alpha_fwd[base].detach(), cfg.ema_window_fwd)
        if cfg.use_reverse_ema:
            alpha = self.ema_alpha_rev[base].detach()
            if cfg.reverse_ema_mode == "snapshot":
                rev = causal_reverse_snapshot(x, alpha, ctx.doc_start, cfg.ema_window_rev)
            else:
                rev = document_ema(x, alpha, ctx.doc_start)
        ctx.ema_cache[base] = (fwd, rev)
        return fwd, rev

    def _router_inputs(
        self, x: Tensor, layer_idx: int, ctx: RoutingContext
    ) -> tuple[Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor, int] | None]:
        """This layer's EMA router features. The causal reverse snapshot (a row gather scaled per token, so
        linear in x) is kept as a row plan: the router projects the source rows to E logits first and
        gathers those, instead of gathering (and back-propagating) d-wide feature rows. ``ctx.ema_cache``
        then holds (fwd, None); :meth:`RoutingContext.ema_features` materialises the feature on request."""
        cfg = self.config
        base = (layer_idx // cfg.layer_stride) * cfg.layer_stride
        plan = ctx.rev_plans.get(base)
        if plan is not None and base in ctx.ema_cache:  # (a cleared cache drops the plan too)
            return ctx.ema_cache[base][0], None, plan
        if not (cfg.use_reverse_ema and cfg.reverse_ema_mode == "snapshot") or base in ctx.ema_cache:
            fwd, rev = self._ema_features(x, layer_idx, ctx)
            return fwd, rev, None
        fwd = None
        if cfg.use_forward_ema:
            fwd = reference_forward_ema(x, self.ema_alpha_fwd[base].detach(), cfg.ema_window_fwd)
        B, T, d = x.shape
        cdt = torch.promote_types(x.dtype, torch.float32)
        src, coef = reverse_snapshot_plan(
            self.ema_alpha_rev[base].detach(), ctx.doc_start, cfg.ema_window_rev, cdt
        )
        plan = (x.reshape(B * T, d), src, coef, layer_idx)
        ctx.rev_plans[base] = plan
        ctx.ema_cache[base] = (fwd, None)
        return fwd, None, plan

    def router_logits(
        self, x: Tensor, layer_idx: int, flags: Tensor, ema_fwd: Tensor | None, ema_rev: Tensor | None
    ) -> Tensor:
        """(B*T, E) float32 = [x, ema_fwd, ema_rev, flags] · W_lᵀ + b_l, a product per feature (no concat)."""
        return self._router_logits(x, layer_idx, flags, ema_fwd, ema_rev, None)

    def _router_logits(
        self,
        x: Tensor,
        layer_idx: int,
        flags: Tensor,
        ema_fwd: Tensor | None,
        ema_rev: Tensor | None,
        rev_plan: tuple[Tensor, Tensor, Tensor, int] | None,
    ) -> Tensor:
        cfg = self.config
        E = cfg.num_experts
        N = x.shape[0] * x.shape[1]
        w = self.router_w[layer_idx]
        cols = cfg.feature_slices

        def term(feat: Tensor | None, name: str) -> Tensor:
            assert feat is not None, name
            a, b = cols[name]
            # a contiguous (E, width) copy of the columns, not a strided view: autograd then computes the
            # weight gradient as gradᵀ @ feat. For a strided weight it takes featᵀ @ grad, which MKL runs
            # ~20x slower for E = 8 outputs and 12k tokens (185 ms instead of 8 ms at the record's shapes)
            return F.linear(feat.reshape(N, -1).to(w.dtype), w[:, a:b].contiguous())

        rev_proj = None
        if rev_plan is not None and rev_plan[3] == layer_idx:
            # the snapshot's source is this layer's input: one product gives the token and reverse terms
            (t0, t1), (r0, r1) = cols["tok"], cols["ema_rev"]
            both = F.linear(x.reshape(N, -1).to(w.dtype), torch.cat([w[:, t0:t1], w[:, r0:r1]]))
            out, rev_proj = both[:, :E], both[:, E:]
        else:
            out = term(x, "tok")
            if rev_plan is not None:
                rev_proj = term(rev_plan[0], "ema_rev")
        if "ema_fwd" in cols:
            out = out + term(ema_fwd, "ema_fwd")
        if rev_plan is not None:
            assert rev_proj is not None
            out = out + index_select_rows(rev_proj, rev_plan[1]) * rev_plan[2][:, None].to(rev_proj.dtype)
        elif "ema_rev" in cols:
            out = out + term(ema_rev, "ema_rev")
        out = out + term(flags, "flags")
        out = out + self.router_b[layer_idx]
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # float32 logits (float64 stays float64)
        return out.reshape(-1, cfg.num_experts)

    def _expert_impl(self, x: Tensor) -> tuple[str, int]:
        cfg = self.config
        if cfg.expert_impl == "blocked_bmm":
            return "blocked", cfg.fallback_block_rows
        on_cpu = x.device.type == "cpu"
        if cfg.expert_impl == "cpu_parallel" and not on_cpu:
            raise RuntimeError(
                f"expert_impl='cpu_parallel' runs on CPU tensors only (got {x.device.type}); use "
                "expert_impl='auto'"
            )
        if cfg.expert_impl == "cpu_parallel" or (
            cfg.expert_impl == "auto" and on_cpu and _cpu_parallel_pays()
        ):
            return "cpu_parallel", cfg.group_align or 1
        ok = grouped_mm_supported(x.device, self.w1.dtype, (cfg.model_dim, cfg.ffn_hidden))
        if cfg.expert_impl == "grouped_mm" and not ok:
            raise RuntimeError(
                f"expert_impl='grouped_mm' but grouped_mm cannot run here (device={x.device.type}, "
                f"dtype={self.w1.dtype}, model_dim={cfg.model_dim}, ffn_hidden={cfg.ffn_hidden}; it needs "
                "float32/bfloat16/float16 and 16-byte aligned rows). Use expert_impl='auto' or 'blocked_bmm'."
            )
        if ok:
            align = cfg.group_align or (16 if x.device.type == "cuda" else 1)
            return "grouped", align
        return "blocked", cfg.fallback_block_rows

    def forward(self, x: Tensor, layer_idx: int, ctx: RoutingContext) -> tuple[Tensor, Tensor]:
        """x: (B, T, d) normed input of layer ``layer_idx``. Returns (y (B, T, d), aux loss ())."""
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.model_dim:
            raise ValueError(
                f"bank input must have shape (B, T, model_dim={cfg.model_dim}); got {tuple(x.shape)}"
            )
        if not 0 <= layer_idx < cfg.num_layers:
            raise IndexError(f"layer_idx {layer_idx} out of range for a bank of num_layers={cfg.num_layers}")
        B, T, d = x.shape
        if ctx.flags.shape[:2] != (B, T):
            raise ValueError(
                f"flags cover {tuple(ctx.flags.shape[:2])} tokens but x has (B, T)={(B, T)}; build the "
                "context "
                "from the same tokens"
            )
        N, E = B * T, cfg.num_experts
        sched = ctx.schedule

        live = live_experts(sched.active_mask, self.pruned)
        ema_fwd, ema_rev, rev_plan = self._router_inputs(x, layer_idx, ctx)
        raw = self._router_logits(x, layer_idx, ctx.flags, ema_fwd, ema_rev, rev_plan)
        logits = shape_logits(
            raw,
            temperature=sched.temperature * sched.temp_mult[layer_idx],
            logit_cap=sched.logit_cap,
            cap_mode=cfg.logit_cap_mode,
            gumbel=sched.gumbel if self.training else None,
        )
        logits = torch.where(sched.router_frozen, logits.detach(), logits)
        selection = None
        if cfg.assignment == "sinkhorn" and self.training:
            selection = sinkhorn_plan(logits.detach(), live, tau=cfg.sinkhorn_tau, iters=cfg.sinkhorn_iters)
        k = cfg.topk
        r = route(
            logits, live, k, gating=cfg.gating, selection=selection, normalize_gates=cfg.normalize_gates
        )

        impl, align = self._expert_impl(x)
        capacity = capacity_for(N, k, E, cfg.capacity_factor)
        priority = position_major_priority(B, T, k, x.device)
        disp = build_dispatch(r.topk_idx, r.valid, priority, E, capacity=capacity, align=align)

        bijection = is_bijection(k, capacity, align)
        rows = dispatch_rows(x.reshape(N, d), disp, bijection)
        gate = torch.where(disp.served, r.gates, torch.zeros_like(r.gates)).to(self.w1.dtype)
        scale, bias = self._adapter_params(layer_idx, sched)
        if impl == "cpu_parallel":
            # adapters and gates are applied inside the expert tasks, while each row is in cache
            row_gate = dispatch_choice_values(gate.reshape(N * k, 1), disp, bijection).view(-1)
            out_rows = expert_ffn_cpu_parallel(
                rows.to(self.w1.dtype), self.w1, self.w2, disp.offs, scale, bias, row_gate
            )
            picked = combine_rows(out_rows, disp, bijection)
            y = picked if k == 1 else picked.view(N, k, d).sum(dim=1)
        else:
            if scale is not None:
                rows = torch.addcmul(
                    index_select_rows(bias, disp.row_expert), rows, index_select_rows(scale, disp.row_expert)
                )
            rows = rows.to(self.w1.dtype)
            if impl == "grouped":
                out_rows = expert_ffn_grouped(rows, self.w1, self.w2, disp.offs)
            else:
                out_rows = expert_ffn_blocked(rows, self.w1, self.w2, disp.row_expert, align)
            picked = combine_rows(out_rows, disp, bijection)
            # top-1: (N, d) * (N, 1), no (N, 1, d) view to select from (a select's backward zero-fills a copy)
            y = picked * gate if k == 1 else (picked.view(N, k, d) * gate[..., None]).sum(dim=1)
        y = y.view(B, T, d).to(x.dtype)

        aux, z = self._aux_loss(r, disp.demanded_counts, layer_idx, sched)
        if cfg.collect_metrics:
            scalars, vectors = call_statistics(
                probs=r.probs,
                logits=logits,
                topk_idx=r.topk_idx,
                valid=r.valid,
                live=live,
                n_live=r.n_live,
                demanded_counts=disp.demanded_counts,
                served_counts=disp.served_counts,
                aux=aux,
                z_loss=z,
            )
            self.metrics.record(layer_idx, scalars, vectors)
        return y, aux

    def _adapter_params(self, layer_idx: int, sched: RoutingSchedule) -> tuple[Tensor | None, Tensor | None]:
        """(scale, bias), each (E, d), of this layer's adapter slot (detached while adapters are frozen), or
        (None, None) without adapters. An expert e's input rows become ``bias[e] + rows * scale[e]``."""
        if self.adapter_scale is None or self.adapter_bias is None:
            return None, None
        slot = self.config.adapter_slot(layer_idx)
        scale, bias = self.adapter_scale[slot], self.adapter_bias[slot]
        frozen = sched.adapters_frozen
        return torch.where(frozen, scale.detach(), scale), torch.where(frozen, bias.detach(), bias)

    def _aux_loss(
        self, r, demanded_counts: Tensor, layer_idx: int, sched: RoutingSchedule
    ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        N, k = r.topk_idx.shape
        importance = r.probs.mean(dim=0)
        with torch.no_grad():
            top1 = (
                torch.zeros_like(importance).scatter_add_(
                    0, r.topk_idx[:, 0], r.valid[:, 0].to(importance.dtype)
                )
                / N
            )
        n_active = sched.active_mask.sum()
        aux = reference_aux_loss(
            importance,
            top1,
            n_active,
            r.n_live,
            lb_coeff=cfg.lb_coeff,
            entropy_coeff=cfg.entropy_coeff,
            lb_mult=sched.lb_mult[layer_idx],
        )
        multi = r.n_live > 1
        if cfg.switch_lb_coeff > 0:
            frac = demanded_counts / float(N * k)
            switch = cfg.switch_lb_coeff * switch_load_balancing_loss(frac, importance)
            aux = aux + torch.where(multi, switch, torch.zeros_like(switch))
        z = router_z_loss(r.logits, r.live) if cfg.z_loss_coeff > 0 else torch.zeros((), device=aux.device)
        aux = aux + torch.where(multi, cfg.z_loss_coeff * z, torch.zeros_like(z))
        aux = torch.where(sched.router_frozen, torch.zeros_like(aux), aux)
        return aux, z

    # ----------------------------------------------------------------------------------------- maintenance
    @torch.no_grad()
    def maybe_init_adapters(self, active_mask: Tensor | None = None) -> None:
        """Give every adapter slot of a newly live expert the mean adapter of the live experts already
        initialised (spec 2.8.7). Tensor ops only: safe to call every step, no host sync."""
        if self.adapter_scale is None:
            return
        E = self.config.num_experts
        mask = (
            torch.ones(E, dtype=torch.bool, device=self.pruned.device) if active_mask is None else active_mask
        )
        init_mask = mask.to(self.pruned.device) & ~self.pruned
        done = self.adapter_initialized
        to_init = init_mask[None, :] & ~done
        sources = init_mask[None, :] & done
        n_src = sources.sum(dim=1, keepdim=True)
        fill = to_init & (n_src > 0)
        for p in (self.adapter_scale, self.adapter_bias):
            mean = (p.float() * sources[..., None]).sum(dim=1) / n_src.clamp(min=1)
            p.copy_(torch.where(fill[..., None], mean[:, None, :].to(p.dtype), p))
        done |= to_init

    @torch.no_grad()
    def prune_inactive_experts(self, activity: Tensor, threshold: float) -> Tensor:
        """Mark experts with activity < threshold as pruned (the most active one is always kept), and zero
        their W1/W2 and adapters. Returns the (E,) pruned mask. No host sync."""
        E = self.config.num_experts
        if activity.shape != (E,):
            raise ValueError(
                f"activity must have shape ({E},) (one value per expert), got {tuple(activity.shape)}"
            )
        activity = activity.to(self.pruned.device).float()
        prune = activity < threshold
        best = torch.argmax(activity)
        prune = prune & (torch.arange(E, device=prune.device) != best)
        self.pruned |= prune
        keep = (~self.pruned).to(self.w1.dtype)
        self.w1.mul_(keep[:, None, None])
        self.w2.mul_(keep[:, None, None])
        if self.adapter_scale is not None:
            self.adapter_scale.mul_(keep[None, :, None])
            self.adapter_bias.mul_(keep[None, :, None])
        return self.pruned.clone()

    def read_metrics(self, reset: bool = True) -> RoutingReport:
        """Per-layer and summary routing metrics since the last read: one device-to-host copy."""
        return self.metrics.read(self.router_w, self.config.feature_slices, reset=reset)
