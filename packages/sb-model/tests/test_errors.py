import pytest
import torch

import sb_model as sm
from sb_model.bank.experts import grouped_mm_supported
from sb_model.bank.features import build_router_flags, segmented_ema


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(topk=5), "topk must be in"),
        (dict(topk=0), "topk must be in"),
        (dict(block_pos_bins=6), "block_pos_bins must be 4, 8 or 16"),
        (dict(gating="relu"), "gating must be"),
        (dict(assignment="expert_choice"), "assignment must be"),
        (dict(capacity_factor=0.0), "capacity_factor must be None"),
        (dict(logit_cap_mode="soft"), "logit_cap_mode must be"),
        (dict(ema_alpha_rev=1.0), "ema_alpha_rev must be in"),
        (dict(reverse_ema_mode="leaky"), "reverse_ema_mode must be"),
        (dict(expert_impl="loop"), "expert_impl must be"),
        (dict(lb_coeff=-1.0), "lb_coeff must be >= 0"),
        (dict(adapter_layer_map=(0, 1)), "adapter_layer_map must have"),
        (dict(model_dim=0), "model_dim must be > 0"),
    ],
)
def test_bad_options(kw, match):
    base = dict(model_dim=8, num_layers=3, num_experts=4, ffn_hidden=16)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        sm.BankConfig(**base)


def test_bad_shapes(make_bank, tokens):
    bank = make_bank()
    flags = build_router_flags(tokens(1, 16))
    ctx = bank.context(flags)
    with pytest.raises(ValueError, match="model_dim=16"):
        bank(torch.randn(1, 16, 8), 0, ctx)
    with pytest.raises(ValueError, match=r"\(B, T, model_dim"):
        bank(torch.randn(16, 16), 0, ctx)
    with pytest.raises(ValueError, match="flags cover"):
        bank(torch.randn(1, 12, 16), 0, ctx)
    with pytest.raises(IndexError, match="num_layers=3"):
        bank(torch.randn(1, 16, 16), 3, ctx)
    with pytest.raises(ValueError, match="build_router_flags"):
        bank.context(torch.zeros(1, 16, 5))
    with pytest.raises(ValueError, match="other sizes"):
        bank.context(flags, sm.RoutingSchedule.create(2, 4))
    with pytest.raises(ValueError, match="active_experts must be in"):
        bank.default_schedule(active_experts=0)
    with pytest.raises(ValueError, match=r"tokens must have shape"):
        build_router_flags(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="segment_ids"):
        segmented_ema(torch.randn(1, 5, 2), 0.5, torch.zeros(1, 4, dtype=torch.long))


def test_grouped_mm_request_on_float64_is_refused(make_bank, tokens):
    bank = make_bank(dtype=torch.float64, expert_impl="grouped_mm")
    ctx = bank.context(build_router_flags(tokens(1, 8)).double())
    with pytest.raises(RuntimeError, match="blocked_bmm"):
        bank(torch.randn(1, 8, 16, dtype=torch.float64), 0, ctx)


def test_unaligned_dims_fall_back_to_blocked(make_bank, tokens):
    assert not grouped_mm_supported(torch.device("cpu"), torch.float32, (6, 32))
    bank = make_bank(model_dim=6)  # 6 * 4 bytes is not a multiple of 16: auto picks the blocked path
    ctx = bank.context(build_router_flags(tokens(1, 8)))
    y, _ = bank(torch.randn(1, 8, 6), 0, ctx)
    assert y.shape == (1, 8, 6)
