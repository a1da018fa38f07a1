import itertools

import pytest
import torch

from sb_model.bank.features import (
    build_router_flags,
    causal_reverse_snapshot,
    document_ema,
    document_starts,
    reference_forward_ema,
    segment_ids_from_starts,
    segmented_ema,
)


def naive_ema(x, a, starts=None):
    B, T, D = x.shape
    y = torch.zeros_like(x, dtype=torch.float64)
    for b in range(B):
        prev = torch.zeros(D, dtype=torch.float64)
        for t in range(T):
            if starts is not None and starts[b, t]:
                prev = torch.zeros(D, dtype=torch.float64)
            prev = a * prev + (1 - a) * x[b, t].double()
            y[b, t] = prev
    return y


@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 4), (64, 16), (100, 32), (129, 64)])
def test_segmented_ema_matches_recurrence_without_resets(T, chunk):
    x = torch.randn(2, T, 5)
    got = segmented_ema(x, 0.8, None, chunk=chunk)
    torch.testing.assert_close(got.double(), naive_ema(x, 0.8), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [3, 8, 64])
def test_document_ema_restarts_at_document_starts(chunk):
    torch.manual_seed(1)
    x = torch.randn(2, 90, 4)
    starts = torch.rand(2, 90) < 0.08
    starts[:, 0] = True
    starts[1, 40] = True
    got = document_ema(x, 0.85, starts, chunk=chunk)
    torch.testing.assert_close(got.double(), naive_ema(x, 0.85, starts), atol=1e-5, rtol=1e-5)
    assert segment_ids_from_starts(starts).shape == (2, 90)


def test_long_sequence_has_no_overflow():
    # The reference's a^(-i) closed form overflows float32 for blocks of 384 at a=0.8; ours uses a^(j-i) only.
    x = torch.randn(1, 1000, 3)
    got = segmented_ema(x, 0.8, None, chunk=384)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), naive_ema(x, 0.8), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [0, 5, 16, 40, 100])
def test_reference_forward_ema_window(window):
    x = torch.randn(1, 40, 3)
    full = naive_ema(x, 0.8)
    expect = full.clone()
    if 0 < window < 40:
        expect[:, window:] = full[:, window - 1 : window]
    got = reference_forward_ema(x, 0.8, window, chunk=8)
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-5)


def naive_reverse_snapshot(x, a, starts, W):
    # Per-document loop, exactly the fixed reference: zero for the first W tokens, then (1-a)*x[s+W-1].
    B, T, D = x.shape
    out = torch.zeros(B, T, D, dtype=torch.float64)
    for b in range(B):
        s_list = [t for t in range(T) if t == 0 or starts[b, t]]
        bounds = [*s_list, T]
        for s, e in itertools.pairwise(bounds):
            w = min(W, e - s)
            for t in range(s + w, e):
                out[b, t] = (1 - a) * x[b, s + w - 1].double()
    return out


@pytest.mark.parametrize("W", [1, 4, 9, 50])
def test_causal_reverse_snapshot_matches_per_document_loop(W):
    torch.manual_seed(2)
    x = torch.randn(2, 60, 3)
    starts = torch.zeros(2, 60, dtype=torch.bool)
    starts[0, [7, 20, 21, 45]] = True
    starts[1, [30]] = True
    got = causal_reverse_snapshot(x, 0.85, starts, W)
    torch.testing.assert_close(got.double(), naive_reverse_snapshot(x, 0.85, starts, W), atol=1e-6, rtol=1e-6)


def test_ema_features_are_shared_within_a_layer_stride_group(make_bank, tokens, reference_forward):
    bank = make_bank(
        num_layers=4,
        use_forward_ema=True,
        use_reverse_ema=True,
        ema_layer_stride=2,
        ema_window_rev=4,
        ema_window_fwd=0,
    )
    flags = build_router_flags(tokens(1, 32))
    ctx = bank.context(flags)
    xs = [torch.randn(1, 32, 16) for _ in range(4)]
    for layer, x in enumerate(xs):
        bank(x, layer, ctx)
    assert sorted(ctx.ema_cache) == [0, 2]
    starts = document_starts(tokens(1, 32))
    for base in (0, 2):
        fwd, rev = ctx.ema_features(base)
        torch.testing.assert_close(fwd, reference_forward_ema(xs[base], 0.8, 0))
        torch.testing.assert_close(rev, causal_reverse_snapshot(xs[base], 0.85, starts, 4))
    # layer 1 routes with layer 0's EMA features, not its own
    fwd0, rev0 = ctx.ema_features(0)
    ctx2 = bank.context(flags)
    bank(xs[0], 0, ctx2)
    y1, _ = bank(xs[1], 1, ctx2)
    expect, _, _ = reference_forward(bank, xs[1], 1, flags, fwd0, rev0)
    torch.testing.assert_close(y1.double(), expect, atol=1e-5, rtol=1e-5)
    own_fwd = reference_forward_ema(xs[1], 0.8, 0)
    own_rev = causal_reverse_snapshot(xs[1], 0.85, starts, 4)
    wrong, _, _ = reference_forward(bank, xs[1], 1, flags, own_fwd, own_rev)
    assert not torch.allclose(wrong, expect)
