"""The bank's output against a direct dense per-expert computation (conftest.reference_bank_forward)."""

import pytest
import torch

from sb_model.bank.features import build_router_flags, document_ema, document_starts
from sb_model.bank.routing import route


def _run(bank, x, flags, layer=0, **sched):
    ctx = bank.context(flags, bank.default_schedule(**sched))
    return bank(x, layer, ctx), ctx


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("impl", ["grouped_mm", "cpu_parallel", "blocked_bmm"])
def test_matches_dense_reference(make_bank, tokens, reference_forward, topk, impl):
    bank = make_bank(topk=topk, expert_impl=impl, use_reverse_ema=True, ema_window_rev=5)
    tok = tokens(2, 24)
    flags = build_router_flags(tok)
    x = torch.randn(2, 24, 16)
    for layer in range(3):
        (y, _), ctx = _run(bank, x, flags, layer, temperature=1.3, logit_cap=1.5)
        _, rev = ctx.ema_features(0)
        expect, _, _ = reference_forward(bank, x, layer, flags, None, rev, temperature=1.3, logit_cap=1.5)
        torch.testing.assert_close(y.double(), expect, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("topk", [1, 2])
def test_active_mask(make_bank, tokens, reference_forward, topk):
    bank = make_bank(topk=topk, num_experts=6, use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 40))
    x = torch.randn(1, 40, 16)
    (y, _), _ = _run(bank, x, flags, active_experts=3)
    expect, _, idx = reference_forward(bank, x, 0, flags, active=torch.arange(6) < 3)
    torch.testing.assert_close(y.double(), expect, atol=2e-5, rtol=1e-4)
    assert set(idx.flatten().tolist()) <= {0, 1, 2}
    report = bank.read_metrics()
    load = report.vectors["load"][0]
    assert load[3] == 0 and load[4] == 0 and load[5] == 0
    assert report.per_layer[0]["live_experts"] == 3


@pytest.mark.parametrize("topk", [1, 2])
def test_single_live_expert_is_deterministic_top1(make_bank, tokens, topk):
    bank = make_bank(topk=topk, use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 20))
    x = torch.randn(1, 20, 16, requires_grad=True)
    (y, aux), _ = _run(bank, x, flags, active_experts=1)
    u = x.detach()[0] * bank.adapter_scale[0, 0] + bank.adapter_bias[0, 0]
    expect = torch.relu(u @ bank.w1[0].t()).square() @ bank.w2[0].t()
    torch.testing.assert_close(y[0], expect, atol=1e-5, rtol=1e-5)  # gate exactly 1
    assert aux.item() == 0.0
    (y.square().sum() + aux).backward()
    assert bank.router_w.grad.abs().max().item() == 0.0  # the router gets no signal with one live expert
    report = bank.read_metrics()
    assert report.per_layer[0]["max_logit"] != report.per_layer[0]["max_logit"]  # NaN, as in the reference
    assert report.vectors["importance"][0] == [1.0, 0.0, 0.0, 0.0]


def test_adapters_off_and_adapter_layer_map(make_bank, tokens, reference_forward):
    flags = build_router_flags(tokens(1, 16))
    x = torch.randn(1, 16, 16)
    bank = make_bank(use_adapters=False, use_reverse_ema=False)
    (y, _), _ = _run(bank, x, flags, layer=2)
    expect, _, _ = reference_forward(bank, x, 2, flags)
    torch.testing.assert_close(y.double(), expect, atol=2e-5, rtol=1e-4)
    tied = make_bank(adapter_layer_map=(0, 0, 1), use_reverse_ema=False)
    assert tied.adapter_scale.shape[0] == 2
    (y, _), _ = _run(tied, x, flags, layer=1)
    expect, _, _ = reference_forward(tied, x, 1, flags)
    torch.testing.assert_close(y.double(), expect, atol=2e-5, rtol=1e-4)


def test_forward_ema_feature_and_batch(make_bank, tokens, reference_forward):
    bank = make_bank(
        topk=2,
        use_forward_ema=True,
        use_reverse_ema=True,
        ema_window_fwd=8,
        ema_window_rev=3,
        reverse_ema_mode="document_ema",
    )
    tok = tokens(3, 20)
    flags = build_router_flags(tok)
    x = torch.randn(3, 20, 16)
    (y, _), ctx = _run(bank, x, flags)
    fwd, rev = ctx.ema_features(0)
    torch.testing.assert_close(rev, document_ema(x, 0.85, document_starts(tok)))
    expect, _, _ = reference_forward(bank, x, 0, flags, fwd, rev)
    torch.testing.assert_close(y.double(), expect, atol=2e-5, rtol=1e-4)


def test_implementations_agree_in_bfloat16(make_bank, tokens):
    flags = build_router_flags(tokens(1, 48))
    x = torch.randn(1, 48, 16, dtype=torch.bfloat16)
    outs = []
    for impl in ("grouped_mm", "cpu_parallel", "blocked_bmm"):
        bank = make_bank(dtype=torch.bfloat16, topk=2, expert_impl=impl, use_reverse_ema=False)
        (y, _), _ = _run(bank, x, flags)
        outs.append(y.float())
    torch.testing.assert_close(outs[0], outs[1], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(outs[0], outs[2], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_cpu_parallel_matches_grouped_mm_with_gradients(make_bank, tokens, topk, capacity_factor):
    """Forward and every gradient (input, experts, adapters, router) agree between the two CPU paths, in
    dropless and capacity mode, with a masked expert (unserved second choices) and a frozen-adapter step."""
    flags = build_router_flags(tokens(2, 40))
    x0 = torch.randn(2, 40, 16)
    results = []
    for impl in ("grouped_mm", "cpu_parallel"):
        bank = make_bank(topk=topk, expert_impl=impl, capacity_factor=capacity_factor, ema_window_rev=5)
        x = x0.clone().requires_grad_()
        total = 0
        for layer, active in ((0, 4), (1, 3), (2, 1)):
            (y, aux), _ = _run(bank, x, flags, layer, active_experts=active, temperature=1.2)
            total = total + (y * torch.linspace(-1, 1, 16)).sum() + aux
        total.backward()
        grads = {n: p.grad.clone() for n, p in bank.named_parameters() if p.grad is not None}
        results.append((float(total.detach()), x.grad.clone(), grads))
    (l0, gx0, g0), (l1, gx1, g1) = results
    assert l0 == pytest.approx(l1, rel=1e-5)
    torch.testing.assert_close(gx0, gx1, atol=1e-5, rtol=1e-4)
    assert g0.keys() == g1.keys() and {"w1", "w2", "adapter_scale", "adapter_bias", "router_w"} <= g0.keys()
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], atol=1e-5, rtol=1e-4, msg=name)


def test_sigmoid_gating_and_normalized_gates(make_bank, tokens):
    flags = build_router_flags(tokens(1, 30))
    x = torch.randn(1, 30, 16)
    bank = make_bank(topk=2, gating="sigmoid", use_reverse_ema=False)
    (y, _), _ = _run(bank, x, flags)
    logits = bank.router_logits(x, 0, flags, None, None).double()
    scores = torch.sigmoid(logits)
    vals, idx = scores.topk(2, -1)
    xs = x[0].double()
    expect = torch.zeros_like(xs)
    for n in range(30):
        for r in range(2):
            e = int(idx[n, r])
            u = xs[n] * bank.adapter_scale[0, e].double() + bank.adapter_bias[0, e].double()
            expect[n] += vals[n, r] * (
                torch.relu(u @ bank.w1[e].double().t()).square() @ bank.w2[e].double().t()
            )
    torch.testing.assert_close(y[0].double(), expect, atol=2e-5, rtol=1e-4)

    norm = make_bank(topk=2, normalize_gates=True, use_reverse_ema=False)
    (y2, _), _ = _run(norm, x, flags)
    probs = torch.softmax(norm.router_logits(x, 0, flags, None, None).double(), -1)
    vals, idx = probs.topk(2, -1)
    vals = vals / vals.sum(-1, keepdim=True)
    expect2 = torch.zeros_like(xs)
    for n in range(30):
        for r in range(2):
            e = int(idx[n, r])
            u = xs[n] * norm.adapter_scale[0, e].double() + norm.adapter_bias[0, e].double()
            expect2[n] += vals[n, r] * (
                torch.relu(u @ norm.w1[e].double().t()).square() @ norm.w2[e].double().t()
            )
    torch.testing.assert_close(y2[0].double(), expect2, atol=2e-5, rtol=1e-4)
    r = route(
        norm.router_logits(x, 0, flags, None, None), torch.ones(4, dtype=torch.bool), 2, normalize_gates=True
    )
    torch.testing.assert_close(r.gates.sum(-1), torch.ones(30))


def test_output_sum_backward_has_no_zero_stride_trap(make_bank, tokens):
    # grouped_mm's backward rejects zero-stride incoming grads; the bank's combine materialises them.
    bank = make_bank(topk=2, expert_impl="grouped_mm")
    flags = build_router_flags(tokens(1, 16))
    x = torch.randn(1, 16, 16, requires_grad=True)
    (y, _), _ = _run(bank, x, flags)
    y.sum().backward()
    assert bank.w1.grad is not None and torch.isfinite(bank.w1.grad).all()
