"""GPTConfig: the bank's options nested as one BankConfig, resolved from the GPT, recorded and rebuilt."""

import json

import pytest

from sb_model import BankConfig, GPTConfig, SharedExpertBank


def test_the_bank_takes_its_gpt_facts_from_the_gpt_config():
    cfg = GPTConfig.tiny(layer_tie_groups=((0, 3),))
    assert (cfg.bank.model_dim, cfg.bank.num_layers) == (cfg.model_dim, cfg.num_layers)
    assert (cfg.bank.flag_block_size, cfg.bank.eod_token_id) == (cfg.block_size, cfg.eod_token_id)
    assert cfg.bank.adapter_layer_map == (0, 1, 2, 0)
    assert GPTConfig.tiny().bank.adapter_layer_map is None  # no tied layers: one adapter slot per layer


def test_to_dict_records_the_resolved_bank_and_from_dict_rebuilds_an_equal_config():
    cfg = GPTConfig.tiny(layer_tie_groups=((0, 3),), bank={"topk": 2, "z_loss_coeff": 1e-3})
    recorded = json.loads(json.dumps(cfg.to_dict()))  # as run.json and checkpoints hold it
    assert recorded["bank"]["topk"] == 2 and recorded["bank"]["model_dim"] == 32
    assert "topk" not in recorded and "bank_options" not in recorded  # one spelling
    assert GPTConfig.from_dict(recorded) == cfg
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def test_a_conflicting_gpt_fact_in_the_bank_is_refused():
    with pytest.raises(ValueError, match="model_dim=64 disagrees with the GPT's value 32"):
        GPTConfig.tiny(bank=BankConfig(model_dim=64))
    with pytest.raises(ValueError, match="eod_token_id"):
        GPTConfig.tiny(bank={"eod_token_id": 5})
    assert GPTConfig.tiny(bank=BankConfig(model_dim=32)).bank.model_dim == 32  # agreeing is fine


def test_with_moves_the_bank_to_the_new_gpt_values():
    cfg = GPTConfig.tiny(bank={"topk": 2})
    wider = cfg.with_(model_dim=64, num_layers=6, skip_map=())
    assert (wider.bank.model_dim, wider.bank.num_layers, wider.bank.topk) == (64, 6, 2)


def test_preset_bank_overrides_apply_on_top_of_the_preset_bank():
    cfg = GPTConfig.tiny(bank={"topk": 2})
    assert (cfg.bank.num_experts, cfg.bank.ffn_hidden, cfg.bank.topk) == (4, 64, 2)
    assert GPTConfig.record(bank={"num_experts": 4}).bank.ffn_hidden == 1024


def test_a_bank_without_its_width_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="model_dim and num_layers not set"):
        SharedExpertBank(BankConfig())


@pytest.mark.parametrize(
    "kw,match",
    [
        # silently clamped or rounded before: refused, naming the field and the fix
        (dict(eod_token_id=97), r"eod_token_id=97 is not a token of the vocabulary 0\.\.96.*end-of-text id"),
        (dict(eod_token_id=-1), r"eod_token_id=-1 is not a token"),
        (
            dict(max_window_tokens=0),
            r"max_window_tokens=0 must be a positive multiple of block_size=16.*use 16",
        ),
        (dict(max_window_tokens=-32), r"max_window_tokens=-32 must be a positive multiple"),
        (dict(max_window_tokens=8), r"max_window_tokens=8 .*use 16"),
        (dict(max_window_tokens=70), r"max_window_tokens=70 .*use 64"),
        # crashed with ZeroDivisionError or built nonsense before
        (dict(head_dim=0), r"head_dim \(0\), itself a positive multiple of 4"),
        (dict(head_dim=-4), r"head_dim \(-4\), itself a positive multiple of 4"),
        (dict(vocab_multiple=0), r"vocab_multiple must be >= 1"),
        (dict(attn_scale=0.0), r"attn_scale must be a finite number > 0"),
        (dict(attn_scale=float("nan")), r"attn_scale must be a finite number > 0"),
    ],
)
def test_values_that_were_clamped_or_crashed_are_refused(kw, match):
    with pytest.raises(ValueError, match="GPTConfig: .*" + match):
        GPTConfig.tiny(**kw)


def test_the_window_and_eod_limits_themselves_are_accepted():
    assert GPTConfig.tiny(max_window_tokens=16).max_window_tokens == 16  # one block
    assert GPTConfig.tiny(eod_token_id=96).bank.eod_token_id == 96  # the last id of the vocabulary
    assert GPTConfig.record().eod_token_id == 50256 < GPTConfig.record().vocab_size


@pytest.mark.parametrize(
    "bank,match",
    [
        (dict(boost_peak_frac=1.5), r"boost_peak_frac must be in \[0, 1\]"),
        (dict(boost_peak_frac=-0.1), r"boost_peak_frac must be in \[0, 1\]"),
        (dict(temp_boost=-1.0), r"temp_boost \* boost_decay_scale must be > -1 \(got -1.0\)"),
        (dict(temp_boost=-0.8, boost_decay_scale=2.0), r"temp_boost \* boost_decay_scale must be > -1"),
        (dict(lb_boost=-1.5), r"lb_boost \* boost_decay_scale must be >= -1"),
        (dict(ema_layer_stride=5), r"ema_layer_stride=5 exceeds num_layers=4.*-1"),
    ],
)
def test_bank_values_that_were_clamped_are_refused(bank, match):
    with pytest.raises(ValueError, match="BankConfig: " + match):
        GPTConfig.tiny(bank=bank)


def test_a_temperature_boost_just_above_the_limit_keeps_every_multiplier_positive():
    from sb_model.bank.bank import layer_boosts

    for shape in ("peak", "valley", "linear_start", "linear_end"):
        cfg = GPTConfig.tiny(num_layers=5, skip_map=(), bank={"temp_boost": -0.99, "boost_shape": shape})
        temp_mult, lb_mult = layer_boosts(cfg.bank)
        assert float(temp_mult.min()) > 0 and float(lb_mult.min()) >= 0
    assert GPTConfig.tiny(bank={"ema_layer_stride": 4}).bank.layer_stride == 4  # = num_layers: accepted
