"""W&B logging: reference names, an offline run sb-analysis reads back, failures fall back to CSV."""

from __future__ import annotations

import json
import math
import sys
import types

import polars as pl
import pytest
from run_log_helpers import fake_report, make_logger, step_scalars

from sb_analysis import read_offline_run
from sb_analysis.wandb_ingest import find_wandb_files
from sb_train.logs import RunLogger, WandbSettings


def test_wandb_unavailable_or_failing_falls_back_to_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    logger = make_logger(tmp_path / "a", wandb=WandbSettings(mode="offline"))
    assert "wandb package is not installed" in capsys.readouterr().err
    logger.log_step(0, step_scalars(0, 3.0))
    logger.close()

    def failing_init(**kwargs):
        raise OSError("no route to host")

    fake = types.SimpleNamespace(init=failing_init, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = make_logger(tmp_path / "b", wandb={"mode": "online", "project": "p"})
    assert "W&B init failed (OSError: no route to host)" in capsys.readouterr().err
    logger.log_step(0, step_scalars(0, 3.0))
    logger.close()
    assert json.loads((tmp_path / "b" / "run.json").read_text())["wandb"] is None
    with pytest.raises(ValueError, match="wandb mode"):
        WandbSettings(mode="disabled")


def test_wandb_payload_uses_reference_names():
    row = {"step": 3, "time_ms": 400.0, "loss": 2.0, "lr_embed": 0.1, "router_temp": 1.2, "momentum": 0.9}
    layer = {"step": 3, "layer": 1, "imp_cv2": 0.2, "load_e0": 0.5, "tokens": None}
    payload = RunLogger.wandb_payload(row, [layer], {"router/max_frac_max": 0.4})
    assert payload == {
        "router/max_frac_max": 0.4,
        "perf/approx_step_time_ms": 400.0,
        "train/loss": 2.0,
        "lr/embed": 0.1,
        "router/temperature": 1.2,
        "momentum": 0.9,
        "train/step": 3.0,
        "router_layer/1/imp_cv2": 0.2,
        "router_layer/1/load_e0": 0.5,
    }


def test_wandb_payload_flags_a_collapsed_router_once_experts_are_live():
    def collapsed(summary):
        return RunLogger.wandb_payload({}, [], summary).get("router/collapsed")

    healthy = {"router/max_frac_max": 0.4, "router/active_min": 4.0, "router/live_experts": 4.0}
    assert collapsed(healthy) == 0.0
    assert collapsed({**healthy, "router/max_frac_max": 0.95}) == 1.0
    assert collapsed({**healthy, "router/active_min": 1.0}) == 1.0
    assert collapsed({**healthy, "router/live_experts": 1.0, "router/active_min": 1.0}) is None


def test_wandb_offline_run_is_readable(tmp_path):
    run_dir = tmp_path / "run"
    logger = make_logger(run_dir, wandb=WandbSettings(mode="offline", project="sb-test"))
    assert logger.wandb_run is not None
    reports = [fake_report(s) for s in range(3)]
    for step in range(3):
        logger.log_step(step, step_scalars(step, 3.0 - step * 0.25), reports[step])
    logger.close()
    header = json.loads((run_dir / "run.json").read_text())
    wb = header["wandb"]
    assert (
        wb["mode"] == "offline" and wb["project"] == "sb-test" and wb["dir"].startswith("wandb/offline-run-")
    )
    assert (run_dir / wb["dir"]).is_dir()
    (wandb_file,) = find_wandb_files(run_dir / wb["dir"])
    run = read_offline_run(wandb_file)
    assert run.state == "finished" and run.wandb_id == wb["run_id"]
    assert run.steps["loss"].to_list() == [3.0, 2.75, 2.5]
    assert run.steps["lr_embed"].to_list() == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert run.steps["time_ms"].to_list() == [100.0, 200.0, 300.0]
    srv = reports[2].vectors["frac_srv"][1]
    last = run.router.filter((pl.col("step") == 2) & (pl.col("layer") == 1)).row(0, named=True)
    assert last["load"] == pytest.approx([v / sum(srv) for v in srv], rel=1e-6)  # dropless: sums to 1
    assert not math.isnan(last["imp_cv2"])
