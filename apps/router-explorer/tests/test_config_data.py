"""Settings from arguments and environment, the data module's queries, downsampling and cache keys."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from router_explorer import data
from router_explorer.cli import streamlit_command
from router_explorer.config import ConfigError, parse_settings, script_args
from router_explorer.pages.routing import nearest_step
from router_explorer.pages.runs import filter_runs, key_figures
from router_explorer.sample_data import synthetic_runs
from sb_analysis import RefusedStatement, ingest


def ingested_runs(tmp_path: Path, steps: int) -> tuple[Path, Path]:
    """(runs folder, database) with sample_data's synthetic runs ingested."""
    runs, db = tmp_path / "runs", tmp_path / "db.duckdb"
    synthetic_runs(runs, steps=steps)
    ingest([runs], db)
    return runs, db


def extra_run(tmp_path: Path, steps: int, run_id: str, dest: Path) -> Path:
    """One more synthetic run (the "healthy" one) with its own run id, moved to ``dest``."""
    synthetic_runs(tmp_path / "more", steps=steps)
    (tmp_path / "more" / "healthy").rename(dest)
    header = json.loads((dest / "run.json").read_text())
    header["run_id"] = run_id
    (dest / "run.json").write_text(json.dumps(header))
    return dest


def test_arguments_win_over_environment(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {"SB_EXPLORER_DB": "env.duckdb", "SB_EXPLORER_RUNS": str(runs), "SB_ANALYSIS_DB": "other.duckdb"}
    s = parse_settings(["--db", "arg.duckdb"], env)
    assert (str(s.db), s.db_from, s.runs) == ("arg.duckdb", "--db", (runs,))
    assert parse_settings([], env).db_from == "$SB_EXPLORER_DB"
    assert parse_settings([], {"SB_ANALYSIS_DB": "a.duckdb"}).db_from == "$SB_ANALYSIS_DB"
    default = parse_settings([], {})
    assert (str(default.db), default.runs, default.ingests) == ("runs.duckdb", (), False)
    two = parse_settings(["--runs", str(runs), str(runs), "--db", "x.duckdb"], {})
    assert two.runs == (runs, runs) and two.ingests
    joined = parse_settings([], {"SB_EXPLORER_RUNS": f"{runs}{os.pathsep}{runs}"})
    assert joined.runs == (runs, runs)


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown argument.*--port"):
        parse_settings(["--port", "3"], {})
    with pytest.raises(ConfigError, match=r"run directory not found: .*missing"):
        parse_settings(["--runs", str(tmp_path / "missing")], {})


def test_script_args_only_under_streamlit_run(tmp_path):
    script = tmp_path / "streamlit_app.py"
    script.write_text("")
    assert script_args([str(script), "--db", "x"], script) == ["--db", "x"]
    assert script_args(["/usr/bin/pytest", "-q"], script) == []
    assert script_args([], script) == [] and script_args(["a"], None) == []


def test_cli_builds_the_streamlit_command():
    ns = argparse.Namespace(db="r.duckdb", runs=["runs/"], port=8600, host=None, headless=True,
                            allowed_host=["explorer.example.org"])
    cmd = streamlit_command(ns)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("_serve.py")
    assert cmd[cmd.index("--server.port") + 1] == "8600" and "--server.headless" in cmd
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"  # loopback unless --host says otherwise
    hosts = [cmd[i + 1] for i, flag in enumerate(cmd) if flag == "--server.allowedHosts"]
    assert hosts == ["localhost", "127.0.0.1", "::1", "explorer.example.org"]
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert cmd[cmd.index("--") :] == ["--", "--db", "r.duckdb", "--runs", "runs/"]


def test_router_lines_are_bucketed_per_layer(sample_db):
    version = data.db_version(sample_db)
    full = data.router_lines(version, "collapsing", max_points=1000)
    assert full.height == 4 * 120 and full["layer"].n_unique() == 4
    small = data.router_lines(version, "collapsing", max_points=25)
    per_layer = small.group_by("layer").len()["len"].to_list()
    assert all(n <= 25 for n in per_layer)
    # bucket means keep the level: the collapsed layer's busiest share stays near 1 late in the run
    late = small.filter((pl.col("layer") == 1) & (pl.col("step") >= 60))
    assert late["max_frac"].min() > 0.9


def test_train_curves_downsample_and_keep_extremes(sample_db):
    version = data.db_version(sample_db)
    curves = data.train_curves(version, ("healthy", "collapsing"), None, max_points=30)
    assert curves.group_by("run_id").len()["len"].max() <= 30
    full = data.train_curves(version, ("healthy",), None, max_points=10_000)
    part = curves.filter(pl.col("run_id") == "healthy")
    assert part["loss_min"].min() == pytest.approx(full["loss"].min())
    assert part["loss_max"].max() == pytest.approx(full["loss"].max())
    smoothed = data.train_curves(version, ("healthy",), 0.1)
    assert "loss_smooth" in smoothed.columns
    assert smoothed["loss_smooth"].diff().abs().mean() < smoothed["loss"].diff().abs().mean()


def test_expert_matrix_and_validation(sample_db):
    version = data.db_version(sample_db)
    steps = data.router_steps(version, "collapsing")
    assert steps == list(range(120))
    m = data.expert_matrix(version, "collapsing", steps[-1], "load")
    assert m.shape == (4, 8) and np.argmax(m[1]) == 3
    assert data.expert_matrix(version, "dense-baseline", 0, "load").shape == (0, 0)
    with pytest.raises(ValueError, match="family"):
        data.expert_matrix(version, "collapsing", 0, "load; DROP TABLE runs")


def test_new_ingest_changes_the_cache_key(tmp_path):
    """An ingest replaces the database file: the version changes and cached answers are not reused."""
    _, db = ingested_runs(tmp_path, steps=20)
    before = data.db_version(db)
    assert data.runs(before).height == 2
    ingest([extra_run(tmp_path, 20, "third", tmp_path / "more" / "renamed")], db)
    after = data.db_version(db)
    assert after != before
    assert data.runs(after).height == 3


def test_missing_database_error_says_how_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="sb-analysis ingest"):
        data.db_version(tmp_path / "none.duckdb")


def test_run_filters(sample_db, smoke_run_id):
    table = key_figures(data.runs(data.db_version(sample_db)))
    assert filter_runs(table, ["synthetic"], [], None, None)["run_id"].to_list() == ["healthy"]
    assert filter_runs(table, [], ["running"], None, None).is_empty()
    low = filter_runs(table, [], [], None, (0.0, 4.0))["run_id"].to_list()
    assert sorted(low) == sorted(["collapsing", "healthy", smoke_run_id])
    assert filter_runs(table, ["smoke"], [], None, None)["run_id"].to_list() == [smoke_run_id]
    days = sorted({d.date() for d in table["created_at"].to_list()})
    assert filter_runs(table, [], [], (days[0], days[-1]), None).height == 4


def test_nearest_step():
    assert nearest_step([0, 10, 20], 14) == 10
    assert nearest_step([0, 10, 20], 16) == 20
    assert nearest_step([0, 10, 20], 99) == 20
    assert nearest_step([5], -3) == 5


def test_sql_fetches_at_most_the_limit(sample_db):
    version = data.db_version(sample_db)
    result = data.run_sql(version, "SELECT * FROM range(50000)", limit=100)
    assert result.frame.height == 100 and result.truncated
    small = data.run_sql(version, "SELECT 1 AS x", limit=100)
    assert small.frame.height == 1 and not small.truncated
    with pytest.raises(RefusedStatement, match="SET/RESET/USE change settings"):
        data.run_sql(version, "SET threads = 1", limit=100)


def test_refreshed_version_ingests_followed_runs(tmp_path):
    runs, db = ingested_runs(tmp_path, steps=10)
    seen = data.db_version(db)
    assert data.refreshed_version(db, (), seen) is None  # nothing followed, nothing changed
    extra_run(tmp_path, 10, "late-run", runs / "late-run")
    new = data.refreshed_version(db, (runs,), seen)
    assert new is not None and new != seen
    assert "late-run" in data.runs(new)["run_id"].to_list()


def test_ingest_with_nothing_new_keeps_the_version(tmp_path):
    """sb-analysis rewrites the file even when nothing is new; the content fingerprint does not change."""
    runs, db = ingested_runs(tmp_path, steps=10)
    seen = data.db_version(db)
    assert data.refreshed_version(db, (runs,), seen) is None
    assert data.db_version(db) == seen
