"""The optimizer groups of the record model (docs/design/optimizer.md), built on the meta device."""

from __future__ import annotations

import pytest

from sb_model import GPT, GPTConfig
from sb_train.config import OptimConfig
from sb_train.config_loading import load_config
from sb_train.optimizer import build_optimizer
from sb_train.param_groups import group_of


def test_record_groups_match_the_reference():
    model = GPT(GPTConfig.record(), device="meta")
    opt = build_optimizer(model, load_config("record").optim)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["embed", "scalar", "router", "adapter", "head", "attn", "shared_ffn"]
    count = {name: sum(p.numel() for p in g["params"]) for name, g in groups.items()}
    assert count == {
        "embed": 45_072_384 + 90_060_544,
        "scalar": 140,
        "router": 404_096,
        "adapter": 401_408,
        "head": 45_072_384,
        "attn": 86_704_128,
        "shared_ffn": 14_680_064,
    }
    assert sum(count.values()) == 282_395_148
    lrs = {name: g["lr"] for name, g in groups.items()}
    assert lrs == {"embed": 0.3, "scalar": 0.015, "router": 0.095, "adapter": 0.03, "head": 1 / 320,
                   "attn": 0.025, "shared_ffn": 0.025}
    assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)
    assert [g["use_muon"] for g in opt.param_groups] == [False] * 5 + [True] * 2
    muon = groups["attn"]
    assert muon["stacked"] and muon["method"] == "turbo" and muon["ns_steps"] == 4 and not muon["nesterov"]
    assert groups["embed"]["betas"] == (0.8, 0.95) and groups["embed"]["eps"] == 1e-10


def test_every_parameter_has_exactly_one_group():
    model = GPT(GPTConfig.tiny(), device="meta")
    opt = build_optimizer(model, OptimConfig())
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))


def test_dense_baseline_goes_to_the_muon_ffn_group():
    model = GPT(GPTConfig.tiny(ffn="dense"), device="meta")
    opt = build_optimizer(model, OptimConfig())
    ffn = next(g for g in opt.param_groups if g["name"] == "shared_ffn")
    assert ffn["use_muon"] and len(ffn["params"]) > 0


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match=r"'extra\.weight' has no optimizer group"):
        group_of("extra.weight")
