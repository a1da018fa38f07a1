"""The per-layer routers: their input features (flags, EMA context) and the logits they compute from them.

Layer l's router scores the E experts as ``[x, ema_fwd, ema_rev, flags] · W_lᵀ + b_l`` (docs/design/bank.md,
router). The flags come from the token ids (:func:`router_flags`, once per forward); the EMA features are
computed once per *EMA group* of ``layer_stride`` consecutive layers, from the input of the group's first
layer (:func:`ema_group`, the one rule used by the bank and by KV-cached decoding). A :class:`RoutingContext`
carries the flags, the schedule tensors and the per-group EMA features through one forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sb_model.bank.config import BankConfig
from sb_model.bank.dispatch import index_select_rows
from sb_model.bank.features import (
    build_router_flags,
    causal_reverse_snapshot,
    document_ema,
    reference_forward_ema,
    reverse_snapshot_plan,
)
from sb_model.bank.trace import RoutingTrace
from sb_model.schedule_tensors import RoutingSchedule


class ReversePlan(NamedTuple):
    """The causal reverse snapshot as a row plan: feature row i = ``source[index[i]] * coef[i]``."""

    source: Tensor  # (N, d) the group's input rows
    index: Tensor  # (N,) int64 source row of each token
    coef: Tensor  # (N,) float coefficient (0 before the snapshot is ready)
    layer_idx: int  # the layer whose input is the source


@dataclass
class RoutingContext:
    """Per-forward inputs shared by every layer's router, plus the EMA features cached per EMA group."""

    flags: Tensor  # (B, T, 3 + bins)
    doc_start: Tensor  # (B, T) bool
    schedule: RoutingSchedule
    # group -> (forward EMA, reverse feature); a reverse snapshot kept as a row plan is None here
    ema_cache: dict[int, tuple[Tensor | None, Tensor | None]] = field(default_factory=dict)
    rev_plans: dict[int, ReversePlan] = field(default_factory=dict)
    trace: RoutingTrace | None = None  # when set, each layer records its choices here (bank/trace.py)

    def ema_features(self, group: int) -> tuple[Tensor | None, Tensor | None]:
        """(forward EMA, reverse feature) of EMA group ``group`` as (B, T, d) tensors, (None, None) before
        the group's first layer ran. A reverse snapshot held as a row plan is materialised here (no grad)."""
        fwd, rev = self.ema_cache.get(group, (None, None))
        plan = self.rev_plans.get(group)
        if rev is None and plan is not None and group in self.ema_cache:
            B, T = self.flags.shape[:2]
            with torch.no_grad():
                rows = plan.source.index_select(0, plan.index).to(plan.coef.dtype) * plan.coef[:, None]
                rev = rows.view(B, T, -1).to(plan.source.dtype)
        return fwd, rev


def ema_group(config: BankConfig, layer_idx: int) -> int:
    """The EMA group of a layer, named by its first layer: the layer whose input the features come from."""
    stride = config.layer_stride
    return (layer_idx // stride) * stride


def router_flags(config: BankConfig, tokens: Tensor, dtype: torch.dtype) -> Tensor:
    """The flag features of ``tokens`` (B, T) with this bank's bins, block size and end-of-document token."""
    return build_router_flags(
        tokens,
        eod_token_id=config.eod_token_id,
        first_doc_tokens=config.first_doc_tokens,
        block_pos_bins=config.block_pos_bins,
        block_size=config.flag_block_size,
        dtype=dtype,
    )


def ema_features(
    config: BankConfig, x: Tensor, alpha_fwd: Tensor, alpha_rev: Tensor, doc_start: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """The enabled EMA features (forward, reverse) of a group's input ``x`` (B, T, d), each (B, T, d)."""
    fwd = rev = None
    if config.use_forward_ema:
        fwd = reference_forward_ema(x, alpha_fwd, config.ema_window_fwd)
    if config.use_reverse_ema:
        if config.reverse_ema_mode == "snapshot":
            rev = causal_reverse_snapshot(x, alpha_rev, doc_start, config.ema_window_rev)
        else:
            rev = document_ema(x, alpha_rev, doc_start)
    return fwd, rev


def router_inputs(
    config: BankConfig, x: Tensor, layer_idx: int, ctx: RoutingContext, alpha_fwd: Tensor, alpha_rev: Tensor
) -> tuple[Tensor | None, Tensor | None, ReversePlan | None]:
    """This layer's EMA features (forward, reverse, reverse plan), computed at the group's first call.

    ``alpha_*`` are the (L,) per-layer EMA coefficients. The causal reverse snapshot (a row gather scaled
    per token, so linear in x) is kept as a :class:`ReversePlan`: the router projects the source rows to E
    logits first and gathers those, instead of gathering (and back-propagating) d-wide feature rows."""
    if not (config.use_forward_ema or config.use_reverse_ema):
        return None, None, None
    group = ema_group(config, layer_idx)
    cached = ctx.ema_cache.get(group)
    if cached is not None:  # (a cleared cache drops the plan too)
        return cached[0], cached[1], ctx.rev_plans.get(group)
    a_fwd, a_rev = alpha_fwd[group].detach(), alpha_rev[group].detach()
    if not (config.use_reverse_ema and config.reverse_ema_mode == "snapshot"):
        fwd, rev = ema_features(config, x, a_fwd, a_rev, ctx.doc_start)
        ctx.ema_cache[group] = (fwd, rev)
        return fwd, rev, None
    fwd = reference_forward_ema(x, a_fwd, config.ema_window_fwd) if config.use_forward_ema else None
    B, T, d = x.shape
    cdt = torch.promote_types(x.dtype, torch.float32)
    index, coef = reverse_snapshot_plan(a_rev, ctx.doc_start, config.ema_window_rev, cdt)
    plan = ReversePlan(x.reshape(B * T, d), index, coef, layer_idx)
    ctx.rev_plans[group] = plan
    ctx.ema_cache[group] = (fwd, None)
    return fwd, None, plan


def router_logits(
    config: BankConfig,
    weight: Tensor,
    bias: Tensor,
    x: Tensor,
    flags: Tensor,
    ema_fwd: Tensor | None,
    ema_rev: Tensor | None,
    rev_plan: ReversePlan | None = None,
    layer_idx: int = -1,
) -> Tensor:
    """(B*T, E) float32 logits of one layer's router (``weight`` (E, in), ``bias`` (E,)): one product per
    feature, no concatenation. ``rev_plan`` replaces ``ema_rev`` when the reverse snapshot is a row plan."""
    E = config.num_experts
    N = x.shape[0] * x.shape[1]
    cols = config.feature_slices

    def term(feat: Tensor | None, name: str) -> Tensor:
        assert feat is not None, name
        a, b = cols[name]
        # a contiguous (E, width) copy of the columns, not a strided view: autograd then computes the
        # weight gradient as gradᵀ @ feat. For a strided weight it takes featᵀ @ grad, which MKL runs
        # ~20x slower for E = 8 outputs and 12k tokens (185 ms instead of 8 ms at the record's shapes)
        return F.linear(feat.reshape(N, -1).to(weight.dtype), weight[:, a:b].contiguous())

    rev_proj = None
    if rev_plan is not None and rev_plan.layer_idx == layer_idx:
        # the snapshot's source is this layer's input: one product gives the token and reverse terms
        (t0, t1), (r0, r1) = cols["tok"], cols["ema_rev"]
        both = F.linear(x.reshape(N, -1).to(weight.dtype), torch.cat([weight[:, t0:t1], weight[:, r0:r1]]))
        out, rev_proj = both[:, :E], both[:, E:]
    else:
        out = term(x, "tok")
        if rev_plan is not None:
            rev_proj = term(rev_plan.source, "ema_rev")
    if "ema_fwd" in cols:
        out = out + term(ema_fwd, "ema_fwd")
    if rev_plan is not None:
        assert rev_proj is not None
        out = out + index_select_rows(rev_proj, rev_plan.index) * rev_plan.coef[:, None].to(rev_proj.dtype)
    elif "ema_rev" in cols:
        out = out + term(ema_rev, "ema_rev")
    out = out + term(flags, "flags")
    out = out + bias
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # float32 logits (float64 stays float64)
    return out.reshape(-1, E)
