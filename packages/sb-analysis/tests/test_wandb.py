from __future__ import annotations

import math
import os
import shutil

import polars as pl
import pytest

from sb_analysis import RunDB, ingest, read_offline_run
from sb_analysis.wandb_ingest import WandbReadError, find_wandb_files, history_to_frames, read_api_run


def test_offline_run_converts_to_our_columns(wandb_offline_run):
    (wandb_file,) = find_wandb_files(wandb_offline_run)
    run = read_offline_run(wandb_file)
    assert run.wandb_id == "wbtest01" and run.project == "sb-test" and run.state == "finished"
    assert run.config["optim"] == {"lr": 0.02, "betas": [0.9, 0.95]}
    steps = run.steps
    assert steps["step"].to_list() == list(range(30))
    assert steps["loss"][3] == pytest.approx(9.4)
    assert steps["time_ms"][0] == 100.0 and steps["tokens"][29] == 30 * 1024
    assert steps["lr_adamw"][0] == 0.01 and math.isnan(steps["logit_cap"][0])
    assert steps["val_loss"].drop_nulls().len() == 4
    router = run.router
    assert router.height == 60 and router["load"][0].to_list() == [0.25, 0.24, 0.26, 0.25]


def test_offline_run_lands_in_the_same_tables(wandb_offline_run, run_root, tmp_path):
    db = tmp_path / "r.duckdb"
    report = ingest([run_root / "healthy", wandb_offline_run], db)
    assert report.exit_code == 0, report.failures
    with RunDB(db) as rdb:
        runs = rdb.runs()
        assert set(runs["run_id"]) == {"healthy", "wandb-wbtest01"}
        wb = runs.filter(pl.col("run_id") == "wandb-wbtest01").row(0, named=True)
        assert wb["source"] == "wandb-offline" and wb["last_step"] == 29 and wb["num_experts"] == 4
        assert wb["final_val_loss"] == pytest.approx(10.1 - 0.2 * 29)
        found = rdb.health("wandb-wbtest01")
        collapse = found.filter(pl.col("rule") == "collapse").row(0, named=True)
        assert collapse["message"].startswith("layer 1 collapsed onto expert 2 from step 15")
        assert rdb.config(["wandb-wbtest01"])["optim.lr"][0] == 0.02
    again = ingest([wandb_offline_run], db)  # idempotent for W&B runs too
    assert again.runs[0].new_rows == {"steps": 0, "router_layers": 0}


def test_truncated_wandb_file_reads_complete_prefix(wandb_offline_run, tmp_path):
    (wandb_file,) = find_wandb_files(wandb_offline_run)
    copy_dir = tmp_path / "wandb" / wandb_offline_run.name
    copy_dir.mkdir(parents=True)
    data = wandb_file.read_bytes()
    (copy_dir / wandb_file.name).write_bytes(data[: int(len(data) * 0.6)])
    run = read_offline_run(copy_dir / wandb_file.name)
    assert run.state == "running"
    assert 0 < run.steps.height < 30
    db = tmp_path / "r.duckdb"
    ingest([copy_dir], db)
    shutil.copyfile(wandb_file, copy_dir / wandb_file.name)  # the run went on and finished
    report = ingest([copy_dir], db)
    assert report.runs[0].new_rows["steps"] == 30 - run.steps.height
    with RunDB(db) as rdb:
        assert rdb.sql("SELECT count(*) AS n FROM steps")["n"][0] == 30
        assert rdb.runs()["state"][0] == "finished"


def test_not_a_wandb_file(tmp_path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a transaction log")
    with pytest.raises(WandbReadError):
        read_offline_run(bogus)


class FakeRun:
    id = "abc123"
    project = "switchbank"
    entity = "team"
    state = "finished"
    created_at = "2026-11-20T10:00:00Z"

    def __init__(self):
        self.config = {"preset": "record", "num_experts": 8, "_wandb": {"x": 1}}
        self.summary = {"val/loss": 2.9}

    def scan_history(self, page_size=1000):
        for step in range(5):
            yield {
                "_step": step,
                "train/loss": 4.0 - step * 0.1,
                "perf/approx_step_time_ms": 470.0 * (step + 1),
                "router/health_score": 0.9,
                "router_layer/0/usage_frac": 0.5,
                "val/loss": "NaN",
                "media": {"_type": "image"},
            }


class FakeApi:
    def __init__(self):
        self.paths = []

    def run(self, path):
        self.paths.append(path)
        return FakeRun()


def test_api_run_through_a_fake_api(tmp_path):
    api = FakeApi()
    db = tmp_path / "r.duckdb"
    report = ingest(["team/switchbank/abc123"], db, wandb_api=api)
    assert report.exit_code == 0, report.failures
    assert api.paths == ["team/switchbank/abc123"]
    with RunDB(db) as rdb:
        row = rdb.runs().row(0, named=True)
        assert row["run_id"] == "wandb-abc123" and row["source"] == "wandb-api" and row["preset"] == "record"
        steps = rdb.sql("SELECT step, loss, time_ms, router_health_score FROM steps ORDER BY step")
        assert steps["loss"].to_list() == pytest.approx([4.0, 3.9, 3.8, 3.7, 3.6])
        assert steps["router_health_score"][0] == 0.9
        assert rdb.sql("SELECT usage_frac FROM router_layers LIMIT 1")["usage_frac"][0] == 0.5


def test_api_without_key_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WandbReadError, match="no API key"):
        read_api_run("team/project/run")


@pytest.mark.skipif(
    not (os.environ.get("WANDB_API_KEY") and os.environ.get("SB_ANALYSIS_WANDB_RUN")),
    reason="needs a network, WANDB_API_KEY and SB_ANALYSIS_WANDB_RUN=entity/project/run_id",
)
def test_real_api_run(tmp_path):
    path = os.environ["SB_ANALYSIS_WANDB_RUN"]
    report = ingest([path], tmp_path / "r.duckdb")
    assert report.exit_code == 0, report.failures
    assert report.runs[0].new_rows["steps"] > 0


def test_history_key_mapping():
    steps, router = history_to_frames(
        [
            {
                "_step": 3,
                "lr/muon": 0.05,
                "router/imp_cv2": 0.1,
                "router_layer/2/feat_w_tok": 0.3,
                "router_layer/2/load_e1": 0.6,
                "router_layer/2/load_e0": 0.4,
                "Weird Key!": 1,
                "flag": True,
            },
        ]
    )
    assert set(steps.columns) == {"step", "lr_muon", "router_imp_cv2", "weird_key", "flag"}
    row = router.row(0, named=True)
    assert row["layer"] == 2 and row["feat_w_tok"] == 0.3 and row["load"] == [0.4, 0.6]
