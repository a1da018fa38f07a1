"""The GPT: parameter counts (record and HEAD), layouts, tie/untie, tie groups, forward/backward in
float32 and
bfloat16, batching, causality, FlexAttention vs SDPA, config errors, and a memorisation run."""

import warnings

import pytest
import torch

from sb_model.attention_masks import FLEX_AVAILABLE
from sb_model.gpt import GPT
from sb_model.gpt_config import GPTConfig


def _tokens(B=2, T=64, V=97, seed=0, eods=((0, 20), (1, 33), (1, 34))):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(1, V, (B, T), generator=g)
    for b, t in eods:
        if b < B and t < T:
            tok[b, t] = 0
    return tok


def _live(model, seed=0):
    """Give the zero-initialised projections some weight so outputs depend on every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            if b.attn is not None:
                b.attn.qkvo_w[3].copy_(torch.randn(b.attn.qkvo_w[3].shape, generator=g) * 0.2)
        if model.bank is not None:
            model.bank.w2.copy_(torch.randn(model.bank.w2.shape, generator=g) * 0.2)
    return model


def _tiny(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(**kw), dtype=dtype)


@pytest.fixture(scope="module")
def record_model():
    return GPT(GPTConfig.record(), device="meta")


def test_record_parameter_count_and_split(record_model):
    c = record_model.parameter_counts()
    assert c["total"] == 282_395_148
    assert c["attention"] == 27 * 4 * 896 * 896 == 86_704_128
    assert c["experts"] == 8 * 2 * 1024 * 896 == 14_680_064
    assert c["routers"] == 28 * (8 * 1803 + 8) == 404_096
    assert c["ffn_bank"] == 15_084_160
    assert c["token_embed"] == 50304 * 896 and c["value_embeds"] == 2 * 50257 * 896
    assert c["embeddings"] == 135_132_928
    assert c["lm_head"] == 45_072_384
    assert c["adapters"] == 2 * 28 * 8 * 896 == 401_408
    assert c["scalars"] == 140
    assert c["other"] == 0 and c["dense_ffn"] == 0
    parts = ("attention", "ffn_bank", "embeddings", "lm_head", "adapters", "scalars")
    assert sum(c[k] for k in parts) == c["total"]
    text = record_model.format_parameter_counts()
    assert "model total: 282,395,148 (282.395M)" in text
    assert "attention stack (27 of 28 layers run attention): 86,704,128 (86.704M)" in text


def test_head_preset_parameter_count():
    model = GPT(GPTConfig.record(num_layers=12, skip_attn_layers=()), device="meta")
    c = model.parameter_counts()
    assert c["total"] == 233_765_820
    assert (c["attention"], c["routers"], c["adapters"], c["scalars"]) == (38_535_168, 173_184, 172_032, 60)


def test_record_layouts(record_model):
    cfg = record_model.config
    ve = cfg.value_embed_layers()
    assert [i for i, j in enumerate(ve) if j is not None] == [0, 1, 26, 27]
    assert [ve[i] for i in (0, 1, 26, 27)] == [0, 1, 0, 1]
    assert cfg.skip_connections == {9: 6, 10: 4, 11: 2}
    assert cfg.padded_vocab_size == 50304 and cfg.num_heads == 7
    assert record_model.rotary.cos.shape == (12288, 64)
    assert GPTConfig.tiny(num_value_embeds=3, num_layers=8).value_embed_layers() == [
        0,
        1,
        2,
        None,
        None,
        0,
        1,
        2,
    ]
    assert GPTConfig.tiny(num_value_embeds=0).value_embed_layers() == [None] * 4
    assert GPTConfig.tiny(num_value_embeds=3, num_layers=4, skip_map=()).value_embed_layers() == [0, 1, 2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward(dtype):
    model = _live(_tiny(dtype=dtype))
    model.routing_schedule.set_(temperature=1.2, logit_cap=3.0, gumbel=True, active_experts=3)
    tok = _tokens()
    out = model(tok[:, :-1], tok[:, 1:])
    assert out.logits is None and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.ce_loss + out.aux_loss)
    assert out.aux_loss > 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad.float()).all(), name
    assert model.bank.router_w.grad.abs().sum() > 0 and model.scalars.grad.abs().sum() > 0
    model.eval()
    ev = model(tok[:, :-1], tok[:, 1:], return_logits=True)
    assert torch.equal(ev.loss, ev.ce_loss)  # eval loss is the cross-entropy alone
    assert ev.logits.shape == (2, 63, 97) and ev.logits.dtype == torch.float32
    assert ev.logits.abs().max() < model.config.logit_softcap


def test_softcap_and_padded_head():
    model = _live(_tiny())
    with torch.no_grad():
        model.lm_head.mul_(1000.0)
    out = model(_tokens(), return_logits=True)
    assert out.logits.shape[-1] == 97 and model.lm_head.shape[0] == 128  # padded to a multiple
    assert out.logits.abs().max() < 15.0 and out.logits.abs().max() > 14.0


def test_batch_rows_match_single_row_runs():
    model = _live(_tiny()).eval()
    tok = _tokens(B=3)
    full = model(tok).logits
    for b in range(3):
        torch.testing.assert_close(full[b : b + 1], model(tok[b : b + 1]).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(tok[0]).logits, full[:1], atol=1e-5, rtol=1e-5)  # (T,) input


def test_model_is_causal():
    """Rewriting the future (documents included) changes no logit at or before t (reverse EMA on, small
    window, so the router features matter)."""
    model = _live(_tiny(bank={"ema_window_rev": 4})).eval()
    model.set_window_blocks(2)
    tok = _tokens(B=1, T=64)
    ref = model(tok).logits
    for t in (10, 19, 40):
        alt = tok.clone()
        alt[0, t + 1 :] = torch.randint(0, 97, (63 - t,), generator=torch.Generator().manual_seed(t))
        alt[0, t + 1 :: 7] = 0
        got = model(alt).logits
        torch.testing.assert_close(got[:, : t + 1], ref[:, : t + 1], atol=1e-5, rtol=1e-5)


def test_window_is_read_from_a_tensor():
    model = _live(_tiny()).eval()
    tok = _tokens(B=1, T=64, eods=())
    model.set_window_blocks(4)
    wide = model(tok).logits
    model.set_window_blocks(1)
    narrow = model(tok).logits
    torch.testing.assert_close(wide[:, :16], narrow[:, :16])  # first block: same keys either way
    assert not torch.allclose(wide[:, 40:], narrow[:, 40:])


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="FlexAttention not in this torch")
def test_flex_and_sdpa_models_agree():
    model = _live(_tiny()).eval()
    model.set_window_blocks(2)
    tok = _tokens(B=2, T=64)
    with warnings.catch_warnings(), torch.no_grad():  # eager FlexAttention warns that it is unfused
        warnings.simplefilter("ignore")
        flex = model(tok, attention="flex").logits
        sdpa = model(tok, attention="sdpa").logits
    torch.testing.assert_close(flex, sdpa, atol=1e-4, rtol=1e-4)


def test_untie_lm_head_copies_once_and_survives_a_state_dict_round_trip():
    model = _tiny(tie_lm_head=True, untie_lm_head_later=True)
    assert model.head_weight is model.embed.weight
    tok = _tokens()
    model(tok, tok).loss.backward()
    assert model.lm_head.grad is None  # tied: the head is the embedding
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.untie_lm_head()
    assert model.head_weight is model.lm_head
    torch.testing.assert_close(model.lm_head, model.embed.weight)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    model.untie_lm_head()
    assert not torch.equal(model.lm_head, model.embed.weight)  # copied once
    model.zero_grad()
    model(tok, tok).loss.backward()
    assert model.lm_head.grad is not None
    restored = _tiny(tie_lm_head=True, untie_lm_head_later=True)
    restored.load_state_dict(model.state_dict())
    assert restored.head_weight is restored.lm_head  # the untied state comes back with the weights
    torch.testing.assert_close(restored(tok).logits, model(tok).logits)
    model.load_state_dict(fresh)
    assert model.head_weight is model.embed.weight  # a state from before the untie is tied again
    with pytest.raises(RuntimeError, match="untie_lm_head_later"):
        _tiny(tie_lm_head=True).untie_lm_head()


def test_tied_head_counts_no_extra_parameters():
    untied = _tiny().parameter_counts()
    tied = _tiny(tie_lm_head=True).parameter_counts()
    assert tied["lm_head"] == 0 and untied["total"] - tied["total"] == untied["lm_head"] == 128 * 32


def test_layer_tie_groups_share_attention_and_adapters():
    model = _tiny(num_layers=5, skip_attn_layers=(2,), layer_tie_groups=((0, 3), (1, 4)))
    assert model.blocks[3].attn is model.blocks[0].attn and model.blocks[4].attn is model.blocks[1].attn
    assert model.bank.config.adapter_layer_map == (0, 1, 2, 0, 1)
    assert model.bank.adapter_scale.shape[0] == 3  # slots of layers 0, 1 (shared) and 2 (untied)
    c = model.parameter_counts()
    assert c["attention"] == 2 * 4 * 32 * 32 and c["adapters"] == 2 * 3 * 4 * 32
    assert c["routers"] == 5 * (4 * (2 * 32 + 11) + 4)  # routers stay per layer
    model(_tokens(), _tokens()).loss.backward()


def test_dense_variant_has_equal_active_ffn_parameters():
    dense = _tiny(ffn="dense", bank={"topk": 2})
    c = dense.parameter_counts()
    assert dense.bank is None and c["ffn_bank"] == 0 and c["adapters"] == 0
    assert c["dense_ffn"] == 4 * 2 * 32 * 64 * 2
    out = dense(_tokens(), _tokens())
    assert out.aux_loss == 0
    out.loss.backward()


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(head_dim=12), "multiple of head_dim"),
        (dict(layer_tie_groups=((0, 2),)), "skip-attention"),
        (dict(layer_tie_groups=((0, 1), (1, 3))), "overlap"),
        (dict(untie_lm_head_later=True), "tie_lm_head=True"),
        (dict(skip_map=((1, 3),)), "src < dest"),
        (dict(attention="xformers"), "auto|flex|sdpa"),
        (dict(num_value_embeds=4), "0..3"),
        (dict(bank={"block_pos_bins": 5}), "block_pos_bins"),
        (dict(skip_attn_layers=(9,)), "skip_attn_layers"),
    ],
)
def test_config_errors_name_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig.tiny(**kw)


def test_bad_inputs():
    model = _tiny()
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.ones(1, 300, dtype=torch.long))


def test_tiny_model_memorises_a_short_text():
    text = "the bank routes every token of every layer into one shared set of experts. " * 2
    ids = torch.tensor([min(ord(c) - 31, 96) for c in text])[:65]
    ids[0] = 0  # document start
    model = _tiny(num_layers=2, skip_attn_layers=(), skip_map=(), bank={"num_experts": 2, "ffn_hidden": 64})
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.set_window_blocks(4)
    first = None
    for _ in range(60):
        loss = model(ids[None, :-1], ids[None, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    model.eval()
    final = model(ids[None, :-1], ids[None, 1:]).ce_loss.item()
    assert first > 4.0 and final < 0.5, (first, final)
