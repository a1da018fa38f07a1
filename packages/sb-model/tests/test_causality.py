"""Changing tokens after position t changes neither the routing nor the output at positions <= t, for the
whole bank (all layers) and every router feature. The checker is first shown to catch a leak."""

import pytest
import torch

from sb_model.bank.features import build_router_flags, causal_reverse_snapshot

T, D, CUT = 64, 16, 37


def _inputs(B, seed, tok=None):
    g = torch.Generator().manual_seed(seed)
    if tok is None:
        tok = torch.randint(0, 50, (B, T), generator=g)
        tok[:, 5] = 50256
        tok[:, 20] = 50256
    table = torch.randn(50257, D, generator=torch.Generator().manual_seed(123))
    x = torch.nn.functional.rms_norm(table[tok], (D,))
    return tok, x


def _perturbed(tok, seed):
    g = torch.Generator().manual_seed(seed)
    new = tok.clone()
    new[:, CUT + 1 :] = torch.randint(0, 50, (tok.shape[0], T - CUT - 1), generator=g)
    new[:, CUT + 3] = 50256  # a document boundary appears in the future only
    return new


def _run_bank(bank, tok, x, gumbel):
    flags = build_router_flags(tok, first_doc_tokens=8, block_pos_bins=8, block_size=16)
    sched = bank.default_schedule(temperature=1.2, logit_cap=2.0, gumbel=gumbel, active_experts=3)
    ctx = bank.context(flags, sched)
    outs, routes = [], []
    h = x
    for layer in range(bank.config.num_layers):
        torch.manual_seed(7 + layer)  # identical Gumbel draws in both runs
        y, _ = bank(h, layer, ctx)
        raw = bank.router_logits(h, layer, ctx.flags, *ctx.ema_features(0))
        routes.append(raw.view(*h.shape[:2], -1))
        outs.append(y)
        h = torch.nn.functional.rms_norm(h + y, (D,))
    return outs, routes


def _assert_prefix_equal(a_list, b_list):
    for a, b in zip(a_list, b_list, strict=True):
        assert torch.equal(a[:, : CUT + 1], b[:, : CUT + 1])


def _assert_causal(bank, B=1, gumbel=True):
    tok, x = _inputs(B, 0)
    tok2, x2 = _inputs(B, 0, _perturbed(tok, 1))
    assert torch.equal(x[:, : CUT + 1], x2[:, : CUT + 1]) and not torch.equal(x, x2)
    outs, routes = _run_bank(bank, tok, x, gumbel)
    outs2, routes2 = _run_bank(bank, tok2, x2, gumbel)
    assert not torch.equal(routes[-1], routes2[-1])  # the future did change something
    _assert_prefix_equal(outs, outs2)
    _assert_prefix_equal(routes, routes2)


FEATURES = {
    "tokens_and_flags": dict(use_reverse_ema=False),
    "reverse_snapshot": dict(use_reverse_ema=True, ema_window_rev=6),
    "reverse_document_ema": dict(use_reverse_ema=True, reverse_ema_mode="document_ema"),
    "forward_ema_windowed": dict(use_forward_ema=True, use_reverse_ema=False, ema_window_fwd=48),
    "forward_ema_full": dict(use_forward_ema=True, use_reverse_ema=False, ema_window_fwd=0),
    "all_features_stride2": dict(
        use_forward_ema=True, use_reverse_ema=True, ema_window_rev=4, ema_layer_stride=2, ema_window_fwd=0
    ),
    "top2_capacity": dict(topk=2, capacity_factor=0.6, ema_window_rev=4),
    "sigmoid_tanh_cap": dict(gating="sigmoid", logit_cap_mode="tanh", ema_window_rev=4),
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_bank_is_causal(make_bank, name):
    bank = make_bank(**FEATURES[name], flag_block_size=16)
    _assert_causal(bank, B=1)


def test_bank_is_causal_with_batch_and_capacity(make_bank):
    bank = make_bank(topk=2, capacity_factor=0.5, use_forward_ema=True, ema_window_rev=4)
    _assert_causal(bank, B=3)


def test_sinkhorn_eval_is_causal_and_training_is_not(make_bank):
    bank = make_bank(assignment="sinkhorn", ema_window_rev=4)
    bank.eval()
    _assert_causal(bank, gumbel=False)
    bank.train()
    with pytest.raises(AssertionError):
        _assert_causal(bank, gumbel=False)  # documented: Sinkhorn couples all tokens of the sequence


def test_checker_catches_the_records_leak():
    # The record's reverse EMA: for the first W tokens of a document, an EMA over current AND future tokens.
    def leaky(x, a=0.85, W=16):
        y = torch.zeros_like(x)
        for t in range(min(W, x.shape[1])):
            acc = 0.0
            for j in range(min(W, x.shape[1]) - 1, t - 1, -1):
                acc = a * acc + (1 - a) * x[:, j]
            y[:, t] = acc
        return y

    x = torch.randn(1, 32, 4)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    assert not torch.equal(leaky(x)[:, :10], leaky(x2)[:, :10])
    assert torch.equal(
        causal_reverse_snapshot(x, 0.85, torch.zeros(1, 32, dtype=torch.bool), 16)[:, :10],
        causal_reverse_snapshot(x2, 0.85, torch.zeros(1, 32, dtype=torch.bool), 16)[:, :10],
    )


def test_flags_match_a_per_token_transcription():
    tok = torch.tensor([[50256, 3, 4, 50256, 50256, 7, 8, 9, 10, 11, 12, 13]])
    flags = build_router_flags(tok, first_doc_tokens=3, block_pos_bins=4, block_size=8)
    starts = [True, True, False, False, True, True, False, False, False, False, False, False]
    last = 0
    for t in range(12):
        if starts[t]:
            last = t
        row = flags[0, t].tolist()
        assert row[0] == float(tok[0, t] == 50256)
        assert row[1] == float(starts[t])
        assert row[2] == float(t - last < 3)
        assert row[3:].index(1.0) == min((t % 8) * 4 // 8, 3)
