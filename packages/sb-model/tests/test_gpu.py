"""CUDA checks (deselected by default; run with `-m gpu` on a GPU machine)."""

import pytest
import torch

import sb_model as sm
from sb_model.bank.features import build_router_flags

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _bank(impl, dtype, seed=0):
    torch.manual_seed(seed)
    cfg = sm.BankConfig(model_dim=128, num_layers=2, num_experts=8, ffn_hidden=256, topk=2, expert_impl=impl)
    bank = sm.SharedExpertBank(cfg, dtype=dtype, device="cuda")
    with torch.no_grad():
        bank.w2.normal_(0, 0.05)
        bank.router_w.normal_(0, 0.05)
    return bank


def test_grouped_mm_matches_blocked_fallback_in_bf16():
    tok = torch.randint(0, 50000, (1, 1024), device="cuda")
    flags = build_router_flags(tok, dtype=torch.bfloat16)
    x = torch.randn(1, 1024, 128, device="cuda", dtype=torch.bfloat16)
    outs = []
    for impl in ("grouped_mm", "blocked_bmm"):
        bank = _bank(impl, torch.bfloat16)
        y, _ = bank(x, 0, bank.context(flags))
        outs.append(y.float())
    torch.testing.assert_close(outs[0], outs[1], atol=3e-2, rtol=3e-2)


def test_no_host_sync_in_forward_and_backward():
    bank = _bank("auto", torch.bfloat16)
    tok = torch.randint(0, 50000, (1, 1024), device="cuda")
    flags = build_router_flags(tok, dtype=torch.bfloat16)
    x = torch.randn(1, 1024, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    sched = bank.default_schedule(temperature=1.2, logit_cap=2.0, gumbel=True, active_experts=5)
    grad = torch.randn_like(x)
    bank(x, 0, bank.context(flags, sched))  # warm up (first-use allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ctx = bank.context(flags, sched)
        y0, a0 = bank(x, 0, ctx)
        y1, a1 = bank(x + y0, 1, ctx)
        torch.autograd.backward([y1, a0 + a1], [grad, torch.ones_like(a1)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
