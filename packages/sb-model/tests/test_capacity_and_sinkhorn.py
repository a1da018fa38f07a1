import pytest
import torch

from sb_model.bank.dispatch import build_dispatch, capacity_for, position_major_priority
from sb_model.bank.features import build_router_flags
from sb_model.bank.routing import route, sinkhorn_plan


def test_dispatch_layout_dropless():
    idx = torch.tensor([[2], [0], [2], [1], [2]])
    valid = torch.ones(5, 1, dtype=torch.bool)
    d = build_dispatch(
        idx, valid, position_major_priority(1, 5, 1, torch.device("cpu")), 4, capacity=None, align=1
    )
    assert d.offs.tolist() == [1, 2, 5, 5]
    assert d.row_token.tolist() == [1, 3, 0, 2, 4]
    assert d.row_expert.tolist() == [0, 1, 2, 2, 2]
    assert d.dest[:, 0].tolist() == [2, 0, 3, 1, 4]
    assert d.served.all()


def test_dispatch_alignment_pads_groups():
    idx = torch.tensor([[2], [0], [2], [1], [2]])
    valid = torch.ones(5, 1, dtype=torch.bool)
    d = build_dispatch(
        idx, valid, position_major_priority(1, 5, 1, torch.device("cpu")), 4, capacity=None, align=4
    )
    offs = d.offs.tolist()
    assert offs[:3] == [4, 8, 12] and offs[-1] == d.row_token.numel() and offs[-1] % 4 == 0
    assert (d.row_expert[d.dest[:, 0]] == idx[:, 0]).all()
    assert (d.row_token[d.dest[:, 0]] == torch.arange(5)).all()


def test_capacity_drops_latest_positions_first_and_counts():
    # 10 tokens, expert 0 demanded by 7 of them; capacity ceil(1.0 * 10 / 2) = 5.
    idx = torch.tensor([[0], [0], [1], [0], [0], [1], [0], [1], [0], [0]])
    valid = torch.ones(10, 1, dtype=torch.bool)
    cap = capacity_for(10, 1, 2, 1.0)
    assert cap == 5
    d = build_dispatch(idx, valid, position_major_priority(1, 10, 1, torch.device("cpu")), 2, capacity=cap)
    assert d.served[:, 0].tolist() == [True, True, True, True, True, True, True, True, False, False]
    assert d.demanded_counts.tolist() == [7.0, 3.0]
    assert d.served_counts.tolist() == [5.0, 3.0]


def test_bank_capacity_mode_accounting(make_bank, tokens):
    bank = make_bank(topk=2, capacity_factor=0.5, use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 40))
    x = torch.randn(1, 40, 16)
    ctx = bank.context(flags)
    y, _ = bank(x, 0, ctx)
    r = route(bank.router_logits(x, 0, flags, None, None), torch.ones(4, dtype=torch.bool), 2)
    demanded = torch.bincount(r.topk_idx.flatten(), minlength=4).float()
    served = demanded.clamp(max=capacity_for(40, 2, 4, 0.5))
    report = bank.read_metrics()
    row = report.per_layer[0]
    assert row["drop_frac"] == pytest.approx(1 - served.sum().item() / 80)
    assert row["drop_frac"] > 0
    assert report.vectors["frac_dem"][0] == pytest.approx((demanded / 80).tolist())
    assert report.vectors["frac_srv"][0] == pytest.approx((served / 80).tolist())
    assert report.summary["router/drop_frac_mean"] == pytest.approx(row["drop_frac"])
    # dropped choices contribute nothing: compare with a dropless bank restricted to the served choices
    dropless = make_bank(topk=2, use_reverse_ema=False)
    y_full, _ = dropless(x, 0, dropless.context(flags))
    assert not torch.allclose(y, y_full)
    disp = build_dispatch(
        r.topk_idx,
        r.valid,
        position_major_priority(1, 40, 2, x.device),
        4,
        capacity=capacity_for(40, 2, 4, 0.5),
    )
    fully_served = disp.served.all(-1)
    torch.testing.assert_close(y[0, fully_served], y_full[0, fully_served])


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    logits = torch.randn(64, 6) * 2
    live = torch.tensor([True, True, False, True, True, True])
    plan = sinkhorn_plan(logits, live, tau=1.0, iters=50)
    assert plan[:, 2].abs().max().item() == 0.0
    torch.testing.assert_close(plan.sum(0)[live], torch.full((5,), 64 / 5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plan.sum(1), torch.ones(64), atol=1e-3, rtol=1e-3)


def test_sinkhorn_selection_balances_training_routing(make_bank, tokens):
    flags = build_router_flags(tokens(1, 128))
    x = torch.randn(1, 128, 16)
    plain = make_bank(use_reverse_ema=False)
    with torch.no_grad():
        plain.router_b[0] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # a strongly skewed router
    balanced = make_bank(use_reverse_ema=False, assignment="sinkhorn", sinkhorn_iters=20)
    balanced.load_state_dict(plain.state_dict())
    plain(x, 0, plain.context(flags))
    balanced(x, 0, balanced.context(flags))
    skew = plain.read_metrics().per_layer[0]["max_frac"]
    even = balanced.read_metrics().per_layer[0]["max_frac"]
    assert skew > 0.6 and even < 0.4
    balanced.eval()  # eval selects by plain top-k (causal)
    balanced(x, 0, balanced.context(flags))
    assert balanced.read_metrics().per_layer[0]["max_frac"] == pytest.approx(skew)
