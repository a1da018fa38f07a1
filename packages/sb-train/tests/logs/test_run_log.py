"""RunLogger writes run directories that sb-analysis reads back exactly (docs/log-format.md), and W&B runs."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest
import torch
from run_log_helpers import GROUPS, E, fake_report, ingest_run, make_logger, step_scalars
from sb_runlog import config_hash
from sb_runlog.columns import ROUTER_COLUMNS

from sb_model.bank.metrics import SCALAR_KEYS
from sb_train.logs import WandbSettings
from sb_train.logs.columns import SCALAR_HEAD, SCALAR_TAIL, router_columns, scalar_columns, statistic_column


def test_column_sets_are_fixed():
    assert scalar_columns(["adamw"]) == [*SCALAR_HEAD, "lr_adamw", *SCALAR_TAIL]
    cols = router_columns(3, ["tok", "ema_fwd"])
    assert cols[:3] == ["step", "layer", "tokens"] and "feat_w_ema_fwd" in cols
    assert cols[-9:] == [f"{f}_e{i}" for f in ("load", "demand", "importance") for i in range(3)]
    with pytest.raises(ValueError, match="cannot be a CSV column"):
        scalar_columns(["Muon lr"])
    with pytest.raises(ValueError, match="twice"):
        scalar_columns(["a", "a"])


def test_every_bank_statistic_has_a_declared_router_column():
    """A statistic the bank reports must land in a router.csv column the format declares (none dropped)."""
    report = fake_report(0)
    statistics = [key for key in report.per_layer[0] if key != "layer" and not key.startswith("feat_w_")]
    assert set(statistics) == set(SCALAR_KEYS)
    for key in SCALAR_KEYS:
        assert statistic_column(key) in ROUTER_COLUMNS, key
        assert statistic_column(key) in router_columns(E)


def test_run_directory_is_read_back_by_sb_analysis(tmp_path):
    run_dir = tmp_path / "run"
    logger = make_logger(run_dir)
    reports = {}
    for step in range(4):
        reports[step] = fake_report(step, capacity=10 if step == 2 else None)
        extra = {"val_loss": 5.0, "val_tokens": 1024} if step == 0 else {}
        logger.log_step(
            step, step_scalars(step, 4.0 - step * 0.5, **extra), reports[step], tokens_per_layer=64
        )
    logger.log_step(4, {"time_ms": 400.0, "tokens": 1024, "val_loss": 2.5, "val_tokens": 2048})
    logger.close("finished")

    header = json.loads((run_dir / "run.json").read_text())
    assert header["format"] == "switchbank-run" and header["run_id"] == "test-run"
    assert header["config_hash"].startswith("sha256:") and header["git_sha"] == "abc123"
    assert header["num_experts"] == E and header["wandb"] is None and header["resumed_from"] is None
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4 and status["time_ms"] == 400.0
    assert status["final_val_loss"] == 2.5 and status["best_val_loss"] == 2.5 and status["best_val_step"] == 4

    with ingest_run(run_dir, tmp_path) as db:
        assert db.errors().height == 0
        run = db.runs().row(0, named=True)
        assert run["state"] == "finished" and run["num_experts"] == E and run["final_val_loss"] == 2.5
        steps = db.steps("test-run")
        assert steps["loss"].to_list()[:4] == [4.0, 3.5, 3.0, 2.5] and steps["loss"][4] is None
        assert steps["lr_embed"].to_list()[:4] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
        assert steps["val_loss"].to_list() == [5.0, None, None, None, 2.5]
        assert steps["window_blocks"][0] == 3 and steps["router_clipped"][0] == 0
        assert steps["logit_cap"][0] is None
        assert abs(steps["wall_time"][0] - time.time()) < 60  # full precision, not .9g's 10 s steps
        assert steps["wall_time"][0] != round(steps["wall_time"][0], -1)
        # the router_* step scalars come from the report summary
        assert steps["router_imp_cv2"][1] == pytest.approx(reports[1].summary["router/imp_cv2"])
        layers = db.sql("SELECT * FROM router_layers ORDER BY step, layer")
        assert layers.height == 8
        for row in layers.iter_rows(named=True):
            rep = reports[row["step"]]
            srv = rep.vectors["frac_srv"][row["layer"]]
            dem = rep.vectors["frac_dem"][row["layer"]]
            assert row["load"] == pytest.approx([v / sum(dem) for v in srv], rel=1e-6)
            assert row["demand"] == pytest.approx([v / sum(dem) for v in dem], rel=1e-6)
            assert row["importance"] == pytest.approx(rep.vectors["importance"][row["layer"]], rel=1e-6)
            assert sum(row["demand"]) == pytest.approx(1.0)
            assert sum(row["load"]) == pytest.approx(1.0 - row["drop_frac"], abs=1e-6)
            assert all(s <= d + 1e-9 for s, d in zip(row["load"], row["demand"], strict=True))
            assert row["tokens"] == 64
            assert row["aux_loss"] == pytest.approx(0.01 * (row["layer"] + 1))
            assert row["feat_w_tok"] == pytest.approx(rep.per_layer[row["layer"]]["feat_w_tok"], rel=1e-6)
            assert row["imp_cv2"] == pytest.approx(rep.per_layer[row["layer"]]["imp_cv2"], rel=1e-6)
        dropped = layers.filter(pl.col("step") == 2)
        assert (dropped["drop_frac"] > 0).all()  # capacity 10 of 2x16 top choices drops some
        assert (dropped["frac_dem_max"] > dropped["max_frac"]).all()  # served trails demanded


def test_bad_scalars_raise_clear_errors(tmp_path):
    logger = make_logger(tmp_path / "run")
    with pytest.raises(ValueError, match=r"unknown scalar\(s\) \['lr_adam'\]"):
        logger.log_step(0, {"time_ms": 1.0, "lr_adam": 0.1})
    with pytest.raises(ValueError, match="time_ms"):
        logger.log_step(0, {"loss": 1.0})
    with pytest.raises(TypeError, match="loss: expected a number"):
        logger.log_step(0, {"time_ms": 1.0, "loss": "low"})
    with pytest.raises(ValueError, match="tokens is an integer column"):
        logger.log_step(0, {"time_ms": 1.0, "tokens": 2.5})
    with pytest.raises(ValueError, match="status state"):
        logger.write_status("done", 0, 0.0)
    with pytest.raises(ValueError, match="called for step 0"):
        logger.log_step(0, {"step": 1, "time_ms": 1.0})
    logger.log_step(0, {"step": 0, "time_ms": torch.tensor(3.0), "loss": torch.tensor(2.0), "tokens": 256.0})
    logger.close()
    assert (tmp_path / "run" / "scalars.csv").read_text().splitlines()[1].startswith("0,3,")


def test_report_with_undeclared_features_or_other_expert_count_raises(tmp_path):
    logger = make_logger(tmp_path / "a", feature_names=["tok"])
    with pytest.raises(ValueError, match=r"feature_names=\['flags'\]"):
        logger.log_step(0, {"time_ms": 1.0}, fake_report(0))
    logger = make_logger(tmp_path / "b", num_experts=8)
    with pytest.raises(ValueError, match="4 experts"):
        logger.log_step(0, {"time_ms": 1.0}, fake_report(0))


def test_resume_appends_and_later_rows_win(tmp_path):
    run_dir = tmp_path / "run"
    first = make_logger(run_dir, total_steps=6)
    for step in range(5):
        val = {"val_loss": {1: 8.0, 4: 8.5}[step]} if step in (1, 4) else {}
        first.log_step(step, step_scalars(step, 10.0 + step, **val), fake_report(step))
    created = json.loads((run_dir / "run.json").read_text())["created_at"]
    with open(run_dir / "scalars.csv", "a") as handle:  # the process was killed mid-line
        handle.write("5,600,17000")
    del first

    with pytest.raises(FileExistsError, match="resumed_from"):
        make_logger(run_dir)
    with pytest.raises(ValueError, match="same run id"):
        make_logger(run_dir, run_id="other", resumed_from={"checkpoint": "ck.pt", "step": 2})
    time.sleep(1.1)  # a later created_at would show
    second = make_logger(
        run_dir, run_id=None, total_steps=6, resumed_from={"checkpoint": "ck/step2.pt", "step": 2}
    )
    assert second.run_id == "test-run"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and status["step"] == 2
    assert status["best_val_loss"] == 8.0 and status["best_val_step"] == 1  # from before step 2
    for step in range(3, 6):
        second.log_step(step, step_scalars(step, 1.0 + step), fake_report(100 + step))
    second.close()

    header = json.loads((run_dir / "run.json").read_text())
    assert header["resumed_from"] == {"checkpoint": "ck/step2.pt", "step": 2}
    assert header["created_at"] == created
    assert sorted(p.name for p in run_dir.glob("*.csv")) == ["router.csv", "scalars.csv"]
    with ingest_run(run_dir, tmp_path) as db:
        assert db.errors().height == 0
        steps = db.steps("test-run")
        assert steps["step"].to_list() == [0, 1, 2, 3, 4, 5]
        assert steps["loss"].to_list() == [10.0, 11.0, 12.0, 4.0, 5.0, 6.0]
        layer = db.sql("SELECT importance FROM router_layers WHERE step = 4 AND layer = 1")
        assert layer["importance"][0].to_list() == pytest.approx(
            fake_report(104).vectors["importance"][1], rel=1e-6
        )


def test_column_change_starts_a_segment(tmp_path):
    run_dir = tmp_path / "run"
    first = make_logger(run_dir)
    first.log_step(0, step_scalars(0, 3.0), fake_report(0))
    first.close("failed", error="RuntimeError('oom')")
    resumed = {"checkpoint": "ck.pt", "step": 0}
    second = make_logger(run_dir, lr_groups=[*GROUPS, "router"], resumed_from=resumed)
    second.log_step(1, step_scalars(1, 2.0, lr_router=0.005), fake_report(1))
    second.close()
    names = sorted(p.name for p in run_dir.glob("*.csv"))
    assert names == ["router.csv", "scalars.1.csv", "scalars.csv"]  # router columns did not change
    with ingest_run(run_dir, tmp_path) as db:
        steps = db.steps("test-run", ["loss", "lr_router"])
        assert steps["loss"].to_list() == [3.0, 2.0] and steps["lr_router"].to_list() == [None, 0.005]
        assert db.runs()["state"][0] == "finished"


def test_disabled_logger_on_other_ranks_writes_nothing(tmp_path):
    run_dir = tmp_path / "rank1"
    logger = make_logger(run_dir, enabled=False, wandb=WandbSettings(mode="offline"))
    assert not logger.enabled and logger.wandb_run is None
    logger.log_step(0, step_scalars(0, 3.0), fake_report(0))
    logger.write_status("running", 0, 1.0)
    logger.close("finished")
    assert not run_dir.exists()
    with pytest.raises(ValueError, match="unknown scalar"):  # the same checks as on rank 0
        logger.log_step(1, {"time_ms": 1.0, "bogus": 1.0})
    with pytest.raises(ValueError, match="4 experts"):
        make_logger(run_dir, enabled=False, num_experts=8).log_step(0, {"time_ms": 1.0}, fake_report(0))


def test_status_extras_survive_close_and_header_keys_are_protected(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="config_hash"):
        make_logger(run_dir, extra_header={"config_hash": "sha256:0"})
    config = {"seed": 1}
    same = {"config_hash": config_hash(config), "git_sha": None, "note": "x"}
    logger = make_logger(run_dir, config=config, extra_header=same)
    logger.log_step(0, step_scalars(0, 3.0))
    logger.write_status("failed", 0, 100.0, error="RuntimeError('oom')", logit_cap_hit_rate=0.25)
    logger.close("failed")
    logger.close("failed")  # a second close does nothing
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError('oom')"
    assert status["logit_cap_hit_rate"] == 0.25
    header = json.loads((run_dir / "run.json").read_text())
    assert (
        header["note"] == "x" and header["git_sha"] is None and header["config_hash"] == same["config_hash"]
    )


def test_context_manager_records_failures(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError), make_logger(run_dir) as logger:
        logger.log_step(0, step_scalars(0, 3.0))
        raise RuntimeError("boom")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "boom" in status["error"] and status["step"] == 0


def test_real_bank_report(tmp_path):
    import sb_model as sm
    from sb_model.bank.features import build_router_flags

    torch.manual_seed(0)
    bank = sm.SharedExpertBank(
        sm.BankConfig(model_dim=16, num_layers=2, num_experts=4, ffn_hidden=32, topk=2)
    )
    tokens = torch.randint(0, 1000, (1, 24))
    ctx = bank.context(build_router_flags(tokens), bank.default_schedule())
    for layer in range(2):
        bank(torch.randn(1, 24, 16), layer, ctx)
    report = bank.read_metrics()
    logger = make_logger(tmp_path / "run", top_k=2, feature_names=list(bank.config.feature_slices))
    logger.log_step(0, step_scalars(0, 3.0), report, tokens_per_layer=24)
    logger.close()
    with ingest_run(tmp_path / "run", tmp_path) as db:
        rows = db.sql("SELECT layer, load, demand FROM router_layers ORDER BY layer")
        assert rows["layer"].to_list() == [0, 1]
        for load in rows["load"]:
            assert sum(load) == pytest.approx(1.0)
