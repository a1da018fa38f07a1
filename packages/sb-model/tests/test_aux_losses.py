"""Aux losses against a plain transcription of docs/design/bank.md (aux losses) (Python floats and math)."""

import math

import pytest
import torch

from sb_model.bank.aux_losses import cv_squared, reference_aux_loss, router_z_loss, switch_load_balancing_loss
from sb_model.bank.features import build_router_flags


def spec_cv2(v):
    m = sum(v) / len(v)
    var = sum((x - m) ** 2 for x in v) / len(v)
    return var / (m * m + 1e-6)


def spec_entropy(v):
    return -sum(x * math.log(x + 1e-6) for x in v)


def spec_aux(imp, load, n_active, n_live, lb, ent, mult):
    if n_live <= 1:
        return 0.0
    h_star = math.log(n_active)
    gap = lambda h: max(0.0, abs(h_star - h) / h_star)  # noqa: E731
    return lb * mult * (spec_cv2(imp) + spec_cv2(load)) + ent * (
        gap(spec_entropy(load)) + gap(spec_entropy(imp))
    )


@pytest.mark.parametrize("n_active", [1, 2, 5, 8])
def test_reference_aux_matches_spec(n_active):
    torch.manual_seed(n_active)
    imp = torch.softmax(torch.randn(8), 0)
    load = torch.softmax(torch.randn(8) * 3, 0)
    got = reference_aux_loss(
        imp,
        load,
        torch.tensor(n_active),
        torch.tensor(n_active),
        lb_coeff=2.15e-3,
        entropy_coeff=2.5e-3,
        lb_mult=torch.tensor(1.4),
    )
    expect = spec_aux(imp.tolist(), load.tolist(), n_active, n_active, 2.15e-3, 2.5e-3, 1.4)
    assert got.item() == pytest.approx(expect, rel=1e-5, abs=1e-9)


def test_cv2_floor_of_a_single_active_expert():
    one_hot = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    assert cv_squared(one_hot).item() == pytest.approx(6.9996, abs=1e-4)  # the logs' value below step 75


def test_switch_and_z_loss():
    f = torch.tensor([0.5, 0.25, 0.25, 0.0])
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert switch_load_balancing_loss(f, p).item() == pytest.approx(4 * (0.2 + 0.075 + 0.05))
    logits = torch.randn(10, 4)
    live = torch.tensor([True, True, False, True])
    expect = sum(math.log(sum(math.exp(float(logits[n, e])) for e in (0, 1, 3))) ** 2 for n in range(10)) / 10
    assert router_z_loss(logits, live).item() == pytest.approx(expect, rel=1e-5)


def test_bank_aux_equals_spec_on_its_own_routing(make_bank, tokens):
    bank = make_bank(num_layers=2, use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 50))
    x = torch.randn(1, 50, 16)
    sched = bank.default_schedule(active_experts=3, lb_mult=torch.tensor([1.0, 1.5]))
    ctx = bank.context(flags, sched)
    _, aux = bank(x, 1, ctx)
    logits = bank.router_logits(x, 1, flags, None, None).masked_fill(torch.arange(4) >= 3, float("-inf"))
    probs = torch.softmax(logits, -1)
    imp = probs.mean(0).tolist()
    top1 = probs.argmax(-1)
    load = [(top1 == e).float().mean().item() for e in range(4)]
    assert aux.item() == pytest.approx(spec_aux(imp, load, 3, 3, 2.15e-3, 2.5e-3, 1.5), rel=1e-4)


def test_optional_losses_are_added(make_bank, tokens):
    flags = build_router_flags(tokens(1, 30))
    x = torch.randn(1, 30, 16)
    base = make_bank(use_reverse_ema=False)
    extra = make_bank(use_reverse_ema=False, switch_lb_coeff=0.01, z_loss_coeff=1e-3)
    _, a0 = base(x, 0, base.context(flags))
    _, a1 = extra(x, 0, extra.context(flags))
    logits = extra.router_logits(x, 0, flags, None, None)
    probs = torch.softmax(logits, -1)
    frac = torch.bincount(probs.argmax(-1), minlength=4).float() / 30
    expect = (
        a0
        + 0.01 * switch_load_balancing_loss(frac, probs.mean(0))
        + 1e-3 * router_z_loss(logits, torch.ones(4, dtype=torch.bool))
    )
    assert a1.item() == pytest.approx(expect.item(), rel=1e-5)


def test_frozen_router_semantics(make_bank, tokens):
    bank = make_bank(use_reverse_ema=False, z_loss_coeff=1e-2)
    flags = build_router_flags(tokens(1, 30))
    x = torch.randn(1, 30, 16, requires_grad=True)
    ctx = bank.context(flags, bank.default_schedule(router_frozen=True, adapters_frozen=True))
    y, aux = bank(x, 0, ctx)
    assert aux.item() == 0.0
    (y.square().sum() + aux).backward()
    assert bank.router_w.grad.abs().max().item() == 0.0
    assert bank.adapter_scale.grad.abs().max().item() == 0.0
    assert bank.w1.grad.abs().max().item() > 0.0
