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
