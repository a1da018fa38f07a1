"""The bank traces into one graph (fullgraph=True) on CPU, forward and backward, and changing any schedule
value (temperature, cap, Gumbel, active mask, multipliers, freeze flags) never recompiles."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from sb_model.bank.features import build_router_flags


def _stack(bank):
    def run(x, flags, sched):
        ctx = bank.context(flags, sched)
        h, aux = x, 0.0
        for layer in range(bank.config.num_layers):
            y, a = bank(h, layer, ctx)
            h, aux = h + y, aux + a
        return h, aux

    return run


def _bank(make_bank, **kw):
    base = dict(
        num_layers=2, topk=2, use_forward_ema=True, ema_window_fwd=0, ema_window_rev=4, z_loss_coeff=1e-3
    )
    base.update(kw)
    return make_bank(**base)


def _schedules(bank):
    sched = bank.default_schedule(temperature=1.4, logit_cap=1.2, gumbel=True, active_experts=1)
    yield sched
    for i, (temp, cap, gumbel, active, frozen) in enumerate(
        [(1.1, 3.0, False, 2, False), (0.9, 0.0, True, 4, False), (1.0, 13.7, False, 3, True)]
    ):
        sched.set_(
            temperature=temp, logit_cap=cap, gumbel=gumbel, active_experts=active, router_frozen=frozen
        )
        sched.lb_mult.fill_(1.0 + i)
        sched.temp_mult.fill_(1.0 + 0.1 * i)
        yield sched
    # a brand-new schedule object with tensors of the same shapes does not recompile either
    yield bank.default_schedule(temperature=2.0, logit_cap=5.0, active_experts=2)


def test_fullgraph_forward_backward_matches_eager(make_bank, tokens):
    # aot_eager traces forward AND backward through AOTAutograd: a host sync or graph break fails here.
    bank = _bank(make_bank, num_layers=1)
    flags = build_router_flags(tokens(1, 32))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_stack(bank), fullgraph=True, backend=counter)
    x = torch.randn(1, 32, 16, requires_grad=True)
    sched = bank.default_schedule(temperature=1.4, logit_cap=1.2, gumbel=True, active_experts=3)
    torch.manual_seed(0)
    y, aux = compiled(x, flags, sched)
    (y.square().mean() + aux).backward()
    grads = [p.grad.clone() for p in (bank.w1, bank.router_w, bank.adapter_scale)]
    bank.zero_grad()
    torch.manual_seed(0)
    ye, auxe = _stack(bank)(x, flags, sched)
    (ye.square().mean() + auxe).backward()
    torch.testing.assert_close(y, ye, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, auxe, atol=1e-6, rtol=1e-5)
    for g, p in zip(grads, (bank.w1, bank.router_w, bank.adapter_scale), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    assert counter.frame_count == 1


def test_schedule_changes_never_recompile(make_bank, tokens):
    bank = _bank(make_bank)
    flags = build_router_flags(tokens(1, 32))
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(_stack(bank), fullgraph=True, backend=counter)
    eager = _stack(bank)
    x = torch.randn(1, 32, 16, requires_grad=True)
    for sched in _schedules(bank):
        torch.manual_seed(0)
        y, aux = compiled(x, flags, sched)
        (y.square().mean() + aux).backward()
        torch.manual_seed(0)
        ye, auxe = eager(x, flags, sched)
        torch.testing.assert_close(y, ye, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(aux, auxe, atol=1e-6, rtol=1e-5)
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} frames"


def test_metrics_accumulate_inside_the_compiled_graph(make_bank, tokens):
    bank = _bank(make_bank, capacity_factor=0.75)
    flags = build_router_flags(tokens(1, 32))
    compiled = torch.compile(_stack(bank), fullgraph=True, backend="eager")
    x = torch.randn(1, 32, 16)
    sched = bank.default_schedule(temperature=1.2)
    compiled(x, flags, sched)
    compiled_report = bank.read_metrics()
    _stack(bank)(x, flags, sched)
    eager_report = bank.read_metrics()
    for a, b in zip(compiled_report.per_layer, eager_report.per_layer, strict=True):
        assert a == pytest.approx(b, nan_ok=True)


@pytest.mark.slow
def test_inductor_fullgraph_matches_eager(make_bank, tokens):
    bank = _bank(make_bank)
    flags = build_router_flags(tokens(1, 32))
    compiled = torch.compile(_stack(bank), fullgraph=True)
    x = torch.randn(1, 32, 16, requires_grad=True)
    for sched in _schedules(bank):
        torch.manual_seed(0)
        y, aux = compiled(x, flags, sched)
        (y.square().mean() + aux).backward()
        torch.manual_seed(0)
        ye, _ = _stack(bank)(x, flags, sched)
        if not bool(sched.gumbel):  # inductor draws its own random numbers
            torch.testing.assert_close(y, ye, atol=1e-4, rtol=1e-4)
