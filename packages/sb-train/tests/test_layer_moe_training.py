"""The per-layer MoE baseline trains end to end: run.json states what was matched, the router log has the
per-layer expert count, and a run resumed from a checkpoint repeats the uninterrupted one bit for bit."""

from __future__ import annotations

import json

from train_helpers import only_run_dir, read_losses, smoke_config

from sb_model import GPT
from sb_train.checkpoint import CheckpointManager
from sb_train.config_loading import load_config
from sb_train.optimizer import build_optimizer
from sb_train.trainer import Trainer

LAYER_MOE = (
    'model.ffn="layer_moe"',
    'model.layer_moe_match="total"',
    "model.bank.num_experts=8",  # 2 experts of its own per layer (4 layers)
    "schedule.expert_activation_schedule=[[0, 1], [2, 4], [4, 8]]",
    "schedule.num_iterations=8",
)


def test_layer_moe_trains_states_its_match_and_resumes_exactly(smoke_data, tmp_path):
    cfg = smoke_config(smoke_data, tmp_path, *LAYER_MOE)
    result = Trainer(cfg).run()
    assert result.state == "finished"
    run_dir = only_run_dir(tmp_path)
    header = json.loads((run_dir / "run.json").read_text())
    assert header["num_experts"] == 2 and header["config"]["model"]["layer_moe_match"] == "total"
    assert header["ffn"] == {"kind": "layer_moe", "match": "total", "expert_groups": 4,
                             "experts_per_layer": 2, "ffn_hidden": 64, "topk": 1, "bank_num_experts": 8}
    counts = header["parameter_counts"]
    assert counts["experts"] == 8 * 2 * 64 * 32  # exactly the shared bank's 8 experts of 64
    assert counts["ffn_active_per_token"] == 4 * 2 * 64 * 32
    router_header = (run_dir / "router.csv").read_text().splitlines()[0].split(",")
    assert "load_e1" in router_header and "load_e2" not in router_header
    reference = read_losses(run_dir)
    assert sorted(reference) == list(range(9))

    checkpoints = CheckpointManager(run_dir / "checkpoints").list()
    first = min(checkpoints, key=lambda c: c.step)
    assert first.step == 3
    resumed = Trainer(smoke_config(smoke_data, tmp_path, *LAYER_MOE), resume=str(first.path)).run()
    assert resumed.state == "finished"
    assert read_losses(run_dir) == reference


def test_layer_moe_experts_join_the_muon_ffn_group():
    for match in ("active", "total"):
        cfg = load_config("smoke", overrides=[*LAYER_MOE[:1], f'model.layer_moe_match="{match}"',
                                              "model.bank.num_experts=8"])
        model = GPT(cfg.model, device="meta")
        opt = build_optimizer(model, cfg.optim)
        seen = [id(p) for g in opt.param_groups for p in g["params"]]
        assert len(seen) == len(set(seen)) == len(list(model.parameters()))
        ffn = next(g for g in opt.param_groups if g["name"] == "shared_ffn")
        assert ffn["use_muon"] and ffn["stacked"]
        assert {id(p) for p in ffn["params"]} == {id(model.bank.w1), id(model.bank.w2)}
