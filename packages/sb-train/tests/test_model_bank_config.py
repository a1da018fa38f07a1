"""The bank's options are one nested section, ``[model.bank]``, from TOML to the model and run.json."""

from __future__ import annotations

import json

import pytest
import torch

from sb_model import GPT, GPTConfig
from sb_model.functional import rms_norm
from sb_train.cli import main as cli_main
from sb_train.config import ConfigError
from sb_train.config_loading import load_config


def test_set_model_bank_topk_routes_top2_and_records_topk_2():
    cfg = load_config("smoke", overrides=["model.bank.topk=2"])
    assert cfg.model.bank.topk == 2
    assert cfg.model.to_dict()["bank"]["topk"] == 2  # what the checkpoint's model_config holds
    assert cfg.to_dict()["model"]["bank"]["topk"] == 2  # what run.json's config holds
    torch.manual_seed(0)
    model = GPT(cfg.model)
    assert model.bank.config.topk == 2
    tokens = torch.randint(1, 256, (2, 32))
    h = rms_norm(torch.randn(2, 32, cfg.model.model_dim))
    routing = model.bank.route(h, 0, model.bank.context(model.router_flags(tokens), model.routing_schedule))
    assert routing.topk_idx.shape == (2 * 32, 2)
    assert (routing.topk_idx[:, 0] != routing.topk_idx[:, 1]).all()  # two different experts per token
    model(tokens, tokens).loss.backward()


def test_dense_baseline_sizes_itself_by_the_banks_topk():
    cfg = load_config("smoke", overrides=["model.ffn=dense", "model.bank.topk=2"])
    model = GPT(cfg.model, device="meta")
    assert model.bank is None
    assert model.blocks[0].dense_ffn.w1.shape[0] == 2 * cfg.model.bank.ffn_hidden == 128


def test_a_model_bank_table_merges_key_by_key(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text("[model.bank]\ntopk = 2\n")
    cfg = load_config("smoke", config_files=[extra])
    assert (cfg.model.bank.topk, cfg.model.bank.num_experts, cfg.model.bank.block_pos_bins) == (2, 4, 4)


def test_the_recorded_config_rebuilds_the_same_model_config():
    cfg = load_config("smoke", overrides=["model.bank.topk=2", "model.layer_tie_groups=[[0, 3]]"])
    recorded = json.loads(json.dumps(cfg.to_dict()))["model"]
    assert recorded["bank"]["model_dim"] == cfg.model.model_dim  # the resolved bank, as built
    assert recorded["bank"]["adapter_layer_map"] == [0, 1, 2, 0]
    assert GPTConfig.from_dict(recorded) == cfg.model


def test_print_config_shows_the_bank_table_and_loads_back(tmp_path, capsys):
    assert cli_main(["--preset", "smoke", "--set", "model.bank.topk=2", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "\n[model.bank]\n" in text and "\ntopk = 2\n" in text
    assert "# model_dim = 32 (from [model])" in text  # the GPT's facts are shown, not set
    path = tmp_path / "printed.toml"
    path.write_text(text)
    assert load_config("smoke", config_files=[path]) == load_config("smoke", overrides=["model.bank.topk=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.topk=2", r"unknown key model.topk \(did you mean model.bank.topk\?\)"),
        ("model.bank.topkk=2", r"did you mean model.bank.topk\?"),
        ("model.bank.topk=two", "model.bank.topk must be an integer"),
        ("model.bank.topk=9", "topk must be in"),
        ("model.bank.gating=relu", "model.bank.gating must be one of"),
        ("model.bank.model_dim=64", "disagrees with the GPT's value 32"),
    ],
)
def test_bad_bank_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", overrides=[override])
