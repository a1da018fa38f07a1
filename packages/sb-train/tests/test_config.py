"""Configuration: presets, overrides, type checks and errors that name the fix."""

from __future__ import annotations

import pytest

from sb_model import GPT, GPTConfig
from sb_train.cli import main as cli_main
from sb_train.config import ConfigError, DataConfig, micro_tokens, validation_steps
from sb_train.config_loading import load_config, preset_names


def test_every_preset_loads():
    assert {"record", "record-1gpu", "tiny", "smoke"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.preset == name


def test_record_preset_is_the_reference():
    cfg = load_config("record")
    assert cfg.model == GPTConfig.record()
    assert GPT(GPTConfig.record(), device="meta").parameter_counts()["total"] == 282_395_148
    assert cfg.schedule.num_iterations == 1750
    assert micro_tokens(cfg.data, cfg.model.block_size) == 12288
    # 8 ranks x 12,288 tokens = 98,304 tokens per step; validation budgets as in docs/design/presets.md
    d = cfg.data
    assert validation_steps(d.val_tokens_intermediate, d.val_tokens, 8, d.val_seq_len) == 4
    assert validation_steps(d.val_tokens_final, d.val_tokens, 8, d.val_seq_len) == 160
    assert (cfg.optim.lr_embed, cfg.optim.lr_router, cfg.optim.lr_muon) == (0.3, 0.095, 0.025)


def test_record_1gpu_keeps_tokens_per_step():
    one = load_config("record-1gpu")
    assert one.model == load_config("record").model
    tokens = micro_tokens(one.data, one.model.block_size) * one.data.grad_accum_steps
    assert tokens == 8 * 12288


def test_micro_tokens_rounds_to_blocks():
    assert micro_tokens(DataConfig(tokens_per_rank=98304, grad_accum_steps=24), 128) == 4096
    assert micro_tokens(DataConfig(tokens_per_rank=1000, grad_accum_steps=3), 128) == 256
    assert micro_tokens(DataConfig(tokens_per_rank=100, grad_accum_steps=1), 128) == 128


def test_overrides_are_typed():
    cfg = load_config("smoke", overrides=["schedule.num_iterations=7", "model.skip_attn_layers=[1]",
                                          "run.wandb=true", "data.train_files=x/a_train_*.bin",
                                          "schedule.expert_activation_schedule=[[0, 1], [3, 4]]"])
    assert cfg.schedule.num_iterations == 7
    assert cfg.model.skip_attn_layers == (1,)
    assert cfg.run.wandb is True
    assert cfg.data.train_files == "x/a_train_*.bin"
    assert cfg.schedule.expert_activation_schedule == ((0, 1), (3, 4))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.num_iteration=5", "did you mean schedule.num_iterations"),
        ("optim.lr_muonn=0.1", "did you mean optim.lr_muon"),
        ("modle.num_layers=2", "did you mean model"),
        ("run.seed=abc", "run.seed must be an integer"),
        ("run.wandb=maybe", "must be true or false"),
        ("model.attention=fast", "must be one of"),
        ("data.tokens_per_rank=0", "data.tokens_per_rank must be >= 1"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", overrides=[override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"unknown preset 'tinny' \(did you mean tiny"):
        load_config("tinny")


def test_print_config_round_trips(tmp_path, capsys):
    assert cli_main(["--preset", "tiny", "--set", "run.seed=3", "--print-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    again = load_config("record", config_files=[path])
    assert again.to_dict() | {"preset": "tiny"} == load_config("tiny", overrides=["run.seed=3"]).to_dict()


def test_cli_reports_config_errors(capsys):
    assert cli_main(["--preset", "smoke", "--set", "run.sed=1"]) == 2
    assert "did you mean run.seed" in capsys.readouterr().err


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nseed = 1\n[optimizer]\nlr_muon = 1\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config("smoke", config_files=[bad])
    with pytest.raises(ConfigError, match="no such file"):
        load_config("smoke", config_files=[tmp_path / "missing.toml"])
