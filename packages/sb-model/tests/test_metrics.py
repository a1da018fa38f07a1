import math

import pytest
import torch

from sb_model.bank.aux_losses import cv_squared, entropy
from sb_model.bank.features import build_router_flags


def test_metrics_match_direct_computation_and_read_once(make_bank, tokens, monkeypatch):
    bank = make_bank(topk=2, use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 40))
    xs = [torch.randn(1, 40, 16) for _ in range(2)]
    sched = bank.default_schedule(temperature=1.1, logit_cap=3.0)
    expected = []
    for x in xs:
        bank(x, 1, bank.context(flags, sched))
        logits = bank.router_logits(x, 1, flags, None, None) / 1.1
        logits = logits.clamp(-3, 3)
        probs = torch.softmax(logits, -1)
        top = probs.topk(2, -1)
        imp = probs.mean(0)
        load = torch.bincount(top.indices[:, 0], minlength=4).float() / 40
        dem = torch.bincount(top.indices.flatten(), minlength=4).float() / 80
        expected.append(
            dict(
                imp_cv2=cv_squared(imp).item(),
                load_cv2=cv_squared(load).item(),
                usage_frac=(load > 0).float().mean().item(),
                topk_prob_mean=top.values.mean().item(),
                top1_p_mean=top.values[:, 0].mean().item(),
                imp_entropy=entropy(imp).item(),
                load_entropy=entropy(load).item(),
                entropy_mean=(-(probs * probs.log()).sum(-1)).mean().item(),
                max_logit=logits.max().item(),
                max_frac=dem.max().item(),
                num_active=float((dem > 0).sum()),
                drop_frac=0.0,
            )
        )
    calls = []
    real_cpu = torch.Tensor.cpu

    def counting_cpu(self, *a, **k):
        calls.append(1)
        return real_cpu(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    report = bank.read_metrics()
    monkeypatch.undo()
    assert len(calls) == 1  # one device-to-host copy per read
    assert len(report.per_layer) == 1 and report.per_layer[0]["layer"] == 1 and report.calls == [2]
    row = report.per_layer[0]
    for key in expected[0]:
        assert row[key] == pytest.approx((expected[0][key] + expected[1][key]) / 2, rel=1e-4, abs=1e-6), key
    for key in ("feat_w_tok", "feat_w_flags"):
        assert key in row
    assert "feat_w_ema_rev" not in row
    s = report.summary
    for key in (
        "router/top1_p_mean",
        "router/max_frac_mean",
        "router/max_frac_max",
        "router/entropy_mean",
        "router/active_min",
        "router/drop_frac_mean",
        "router/frac_srv_e0",
        "router/frac_dem_e3",
        "router/frac_srv_max",
        "router/frac_dem_max",
        "router/imp_cv2",
        "router/load_cv2",
        "router/usage_frac",
        "router/topk_prob_mean",
        "router/max_logit",
        "router/aux_mean",
        "router_expert/e0",
        "router_expert/min_usage",
    ):
        assert key in s, key
    assert s["router/frac_srv_max"] == pytest.approx(s["router/frac_dem_max"])  # dropless
    assert "router/collapsed" not in s  # judging health is the log layer's job (sb-runlog)
    assert bank.read_metrics().per_layer == []  # read() resets


def test_a_collapsed_layer_shows_in_the_summary_inputs_of_the_collapse_rule(make_bank, tokens):
    bank = make_bank(use_reverse_ema=False)
    with torch.no_grad():
        bank.router_b[0] = torch.tensor([50.0, 0, 0, 0])
    bank(torch.randn(1, 20, 16), 0, bank.context(build_router_flags(tokens(1, 20))))
    s = bank.read_metrics().summary
    # the rule itself (sb-runlog's health thresholds) is applied by the trainer's logs
    assert s["router/max_frac_max"] == 1.0 and s["router/active_min"] == 1.0 and s["router/live_experts"] == 4


def test_single_expert_phase_reports_nan_max_logit_and_is_not_collapse(make_bank, tokens):
    bank = make_bank(use_reverse_ema=False)
    ctx = bank.context(build_router_flags(tokens(1, 20)), bank.default_schedule(active_experts=1))
    bank(torch.randn(1, 20, 16), 0, ctx)
    s = bank.read_metrics().summary
    assert math.isnan(s["router/max_logit"]) and s["router/live_experts"] == 1  # logs skip the collapse rule
    assert s["router/load_cv2"] == pytest.approx(3.0, abs=1e-4)  # E/n - 1 with E=4, n=1


def test_max_logit_totals_give_an_interval_mean_without_reading(make_bank, tokens):
    bank = make_bank(use_reverse_ema=False)
    flags = build_router_flags(tokens(1, 20))
    bank(torch.randn(1, 20, 16), 0, bank.context(flags, bank.default_schedule(active_experts=1)))
    before = bank.metrics.max_logit_totals()
    for _ in range(2):
        bank(torch.randn(1, 20, 16), 0, bank.context(flags))
    delta = bank.metrics.max_logit_totals() - before
    assert delta[0, 1] == 2  # two calls with more than one live expert; the single-expert call is not counted
    bank.metrics.reset()
    bank(torch.randn(1, 20, 16), 0, bank.context(flags))
    total = bank.metrics.max_logit_totals()
    one = bank.read_metrics().per_layer[0]["max_logit"]  # what read() reports for the same call
    assert math.isfinite(one) and float(total[0, 0]) == pytest.approx(one) and float(total[0, 1]) == 1
    assert bank.metrics.max_logit_totals()[0, 0] == 0  # read() reset the sums
