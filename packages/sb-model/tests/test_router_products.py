"""The router's weight gradients are computed as gradᵀ @ feature, never as featureᵀ @ grad.

MKL runs the second orientation ~20x slower for E = 8 outputs at 12k tokens (see the README's benchmark), and
autograd picks it whenever the weight is a strided view; the bank passes contiguous weight columns instead.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sb_model.bank.features import build_router_flags


class _RecordMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            a, b = (args[0], args[1]) if func is torch.ops.aten.mm.default else (args[1], args[2])
            self.shapes.append((tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_adapters", [True, False])
def test_router_weight_gradients_are_grad_transposed_times_feature(make_bank, tokens, use_adapters):
    # two layers in one EMA group: layer 0 owns the reverse snapshot (one fused token+reverse product),
    # layer 1 has separate token and reverse products; plus the flags term in both
    bank = make_bank(num_layers=2, use_reverse_ema=True, use_adapters=use_adapters, expert_impl="grouped_mm")
    B, T = 2, 24
    N, E, d = B * T, bank.config.num_experts, bank.config.model_dim
    tok = tokens(B, T)
    ctx = bank.context(build_router_flags(tok), bank.default_schedule(temperature=1.0))
    x = torch.randn(B, T, d, requires_grad=True)
    loss = sum((bank(x * (i + 1), i, ctx)[0] ** 2).sum() for i in range(2))
    with _RecordMatmuls() as rec:
        loss.backward()
    logit_grad_widths = {2 * E, E}
    # featureᵀ @ grad: a (width, N) transposed feature times an (N, E or 2E) logit gradient
    slow = [(a, b) for a, b in rec.shapes if len(b) == 2 and b[0] == N and b[1] in logit_grad_widths]
    assert not slow, f"router weight gradient computed as featureᵀ @ grad: {slow}"
    # gradᵀ @ feature: (E or 2E, N) @ (N, width) for the token/reverse products and the flags
    fast = [(a, b) for a, b in rec.shapes if a[0] in logit_grad_widths and a[1] == N and b[0] == N]
    widths = sorted(b[1] for _, b in fast)
    assert widths.count(d) >= 2 and widths.count(bank.config.num_flag_features) == 2, rec.shapes
    assert bank.router_w.grad is not None and bank.router_w.grad.abs().sum() > 0
