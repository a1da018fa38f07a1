"""Blocks: residual lambdas, skip-attention layers, the bank call on the normed residual, and the per-layer
temperature / load-balance boosts by layer position."""

import pytest
import torch

from sb_model.bank.bank import layer_boosts
from sb_model.bank.features import build_router_flags
from sb_model.functional import rms_norm
from sb_model.gpt import GPT
from sb_model.gpt_config import GPTConfig


def _model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig.tiny(**kw))


def _run_block(model, i, x, x0, tok):
    cfg = model.config
    masks = model.attention_masks(tok)
    flags = build_router_flags(tok, eod_token_id=0, first_doc_tokens=cfg.bank.first_doc_tokens, block_size=16)
    ctx = model.bank.context(flags, model.routing_schedule)
    L = cfg.num_layers
    sc = model.scalars
    out = model.blocks[i](
        x,
        x0,
        None,
        sc[L + 2 * i : L + 2 * i + 2],
        sc[3 * L + 2 * i : 3 * L + 2 * i + 2],
        masks,
        model.rotary,
        model.bank,
        ctx,
    )
    return out, ctx


def _io(T=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(1, 97, (2, T), generator=g)
    return torch.randn(2, T, 32, generator=g), torch.randn(2, T, 32, generator=g), tok


def test_fresh_block_is_the_residual_lambda_mix():
    """Zero-initialised attention output and expert W2: a new block returns λ_x·x + λ_x0·x0 exactly."""
    model = _model()
    x, x0, tok = _io()
    L = model.config.num_layers
    with torch.no_grad():
        model.scalars[L : L + 2] = torch.tensor([0.8, 0.3])
    (y, aux), _ = _run_block(model, 0, x, x0, tok)
    torch.testing.assert_close(y, 0.8 * x + 0.3 * x0)
    assert aux.shape == () and torch.isfinite(aux)


def test_block_is_attention_then_bank_on_the_normed_residual():
    model = _model()
    with torch.no_grad():
        for b in model.blocks:
            if b.attn is not None:
                b.attn.qkvo_w[3].normal_(0, 0.3)
        model.bank.w2.normal_(0, 0.3)
    x, x0, tok = _io()
    (y, _), ctx = _run_block(model, 1, x, x0, tok)
    L = model.config.num_layers
    sc = model.scalars
    masks = model.attention_masks(tok)
    h = sc[L + 2] * x + sc[L + 3] * x0
    h = h + model.blocks[1].attn(h, None, sc[3 * L + 2 : 3 * L + 4], model.rotary, masks.short)
    ctx.ema_cache.clear()
    expected = h + model.bank(rms_norm(h), 1, ctx)[0]
    torch.testing.assert_close(y, expected)


def test_skip_attention_layer_has_no_attention():
    model = _model()  # tiny: layer 2 skips attention
    assert model.blocks[2].attn is None
    assert all(model.blocks[i].attn is not None for i in (0, 1, 3))
    with torch.no_grad():
        model.bank.w2.zero_()
    x, x0, tok = _io()
    (y, _), _ = _run_block(model, 2, x, x0, tok)
    L = model.config.num_layers
    torch.testing.assert_close(y, model.scalars[L + 4] * x + model.scalars[L + 5] * x0)


def test_record_boosts_by_layer_position():
    temp, lb = layer_boosts(GPTConfig.record().bank)
    assert temp[0] == 1.0 and temp[-1] == 1.0 and lb[0] == 1.0 and lb[-1] == 1.0
    assert int(temp.argmax()) == 13 and int(lb.argmax()) == 13
    assert abs(float(temp[13]) - 1.198) < 1e-3 and abs(float(lb[13]) - 1.494) < 1e-3
    # the same values travel to the bank in the model's routing schedule
    small = _model(num_layers=6, skip_map=())
    small_temp, small_lb = layer_boosts(small.config.bank)
    assert int(small_temp.argmax()) == 2 and float(small_temp.max()) > 1.0
    torch.testing.assert_close(small.routing_schedule.temp_mult, small_temp)
    torch.testing.assert_close(small.routing_schedule.lb_mult, small_lb)


@pytest.mark.parametrize(
    "shape,first,last",
    [("valley", 1.0, 1.0), ("linear_start", 1.0, 0.0), ("linear_end", 0.0, 1.0), ("peak", 0.0, 0.0)],
)
def test_boost_shapes(shape, first, last):
    model = _model(
        num_layers=5,
        bank=dict(boost_shape=shape, temp_boost=0.5, lb_boost=1.0, boost_decay_scale=0.5),
    )
    temp = model.routing_schedule.temp_mult.tolist()
    lb = model.routing_schedule.lb_mult.tolist()
    # mult = 1 + decay_scale * boost * shape
    assert temp[0] == pytest.approx(1 + 0.25 * first) and temp[-1] == pytest.approx(1 + 0.25 * last)
    assert lb[0] == pytest.approx(1 + 0.5 * first) and lb[-1] == pytest.approx(1 + 0.5 * last)


def test_long_and_short_window_layers():
    model = GPT(GPTConfig.record(), device="meta")
    assert [b.layer_idx for b in model.blocks if b.long_window] == [0, 4, 8, 12, 16, 20, 24]
    assert "skipped" in repr(model.blocks[11])
