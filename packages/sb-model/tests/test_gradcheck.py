import pytest
import torch

from sb_model.bank.features import build_router_flags

PARAMS = ("w1", "w2", "router_w", "router_b", "adapter_scale", "adapter_bias")


@pytest.mark.parametrize("features", ["ema", "aux_options"])
def test_float64_gradcheck_tiny_bank(make_bank, tokens, features):
    # float64 runs the blocked-bmm path (grouped_mm has no float64 kernel). Routing is piecewise constant, so
    # gradcheck differentiates gates (softmax), experts, adapters, router and EMA features at a fixed routing.
    kw = dict(dtype=torch.float64, topk=2, model_dim=4, ffn_hidden=8, num_experts=3, num_layers=2)
    if features == "ema":
        kw.update(use_forward_ema=True, ema_window_fwd=0, reverse_ema_mode="document_ema")
    else:
        kw.update(
            use_reverse_ema=False, switch_lb_coeff=0.1, z_loss_coeff=0.1, lb_coeff=0.1, entropy_coeff=0.1
        )
    bank = make_bank(**kw)
    flags = build_router_flags(tokens(1, 10, doc_every=4)).double()
    x = torch.randn(1, 10, 4, dtype=torch.float64, requires_grad=True)
    values = [getattr(bank, n).detach().clone().requires_grad_(True) for n in PARAMS]

    def fn(x, *ps):
        ctx = bank.context(flags, bank.default_schedule(temperature=0.9, active_experts=3))
        state = dict(zip(PARAMS, ps, strict=True))
        y0, a0 = torch.func.functional_call(bank, state, (x, 0, ctx))
        y1, a1 = torch.func.functional_call(bank, state, (x + y0, 1, ctx))
        return y1, a0 + a1

    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
