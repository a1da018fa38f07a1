from __future__ import annotations

import io
import subprocess
import sys

import polars as pl
import pytest

from sb_analysis import RunDB
from sb_analysis.cli import main
from sb_analysis.shell import run_shell
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run


def test_sql_prints_a_table(shared_db, capsys):
    code = main(
        [
            "--db",
            str(shared_db),
            "sql",
            "SELECT run_id, count(*) AS n FROM steps GROUP BY run_id ORDER BY run_id",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| collapsed | 301 |" in out.replace("  ", " ").replace("  ", " ")
    assert "peaky" in out and "healthy" in out


def test_sql_out_csv_and_parquet(shared_db, tmp_path):
    query = "SELECT run_id, step, loss FROM steps WHERE step < 5 ORDER BY run_id, step"
    assert main(["--db", str(shared_db), "sql", query, "--out", str(tmp_path / "x.csv")]) == 0
    assert main(["--db", str(shared_db), "sql", query, "--out", str(tmp_path / "x.parquet")]) == 0
    csv = pl.read_csv(tmp_path / "x.csv")
    parquet = pl.read_parquet(tmp_path / "x.parquet")
    assert csv.height == parquet.height == 15
    assert csv["loss"].to_list() == pytest.approx(parquet["loss"].to_list())
    list_query = "SELECT run_id, load FROM router_layers LIMIT 2"
    assert main(["--db", str(shared_db), "sql", list_query, "--out", str(tmp_path / "l.csv")]) == 0
    assert ";" in (tmp_path / "l.csv").read_text()


def test_sql_errors_are_clear(shared_db, tmp_path, capsys):
    assert main(["--db", str(shared_db), "sql", "SELECT nope FROM steps"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["--db", str(tmp_path / "missing.duckdb"), "runs"]) == 1
    assert "sb-analysis ingest" in capsys.readouterr().err
    assert main(["--db", str(shared_db), "sql", "SELECT 1", "--out", str(tmp_path / "x.txt")]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err


def test_compare_side_by_side(shared_db, capsys):
    assert main(["--db", str(shared_db), "compare", "healthy", "collapsed", "--target", "4.0"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.index("healthy") < header.index("collapsed")
    for metric in (
        "final_val_loss",
        "best_val_loss",
        "tokens_per_s",
        "target_time_min",
        "health_score_final",
    ):
        assert metric in out
    assert main(["--db", str(shared_db), "compare", "healthy", "ghost"]) == 2  # an unknown run is bad input
    assert "ghost" in capsys.readouterr().err


def test_compare_values(shared_db):
    with RunDB(shared_db) as db:
        frame = db.compare(["collapsed", "healthy"], target_loss=4.0)
        steps = db.steps("healthy", columns=["val_loss", "time_ms"])
    assert frame["run_id"].to_list() == ["collapsed", "healthy"]
    healthy = frame.row(1, named=True)
    vals = steps.drop_nulls("val_loss")
    first_hit = vals.filter(pl.col("val_loss") <= 4.0).row(0, named=True)
    assert healthy["target_step"] == first_hit["step"]
    assert healthy["target_time_min"] == pytest.approx(first_hit["time_ms"] / 60000)
    assert healthy["best_val_loss"] == pytest.approx(vals["val_loss"].min())
    assert healthy["final_val_loss"] == pytest.approx(vals.sort("step")["val_loss"][-1])
    assert frame.row(0, named=True)["collapsed_layers_final"] == 1


def test_health_command(shared_db, capsys, tmp_path):
    out_file = tmp_path / "f.csv"
    assert main(["--db", str(shared_db), "health", "collapsed", "--windows", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "[ bad] layer 2 collapsed onto expert 3 from step 120" in out
    assert "window_idx" in out
    assert pl.read_csv(out_file)["rule"][0] == "collapse"


def test_shell_runs_statements_and_commands(shared_db):
    script = io.StringIO(
        ".tables\nSELECT count(*) AS n\n  FROM runs;\n.schema steps\n.limit 1\n"
        "SELECT run_id FROM runs ORDER BY run_id;\nSELECT bad syntax;\n.quit\n"
    )
    captured = io.StringIO()
    with RunDB(shared_db) as db:
        sys_stdout = sys.stdout
        sys.stdout = captured
        try:
            assert run_shell(db, stdin=script) == 0
        finally:
            sys.stdout = sys_stdout
    out = captured.getvalue()
    assert "router_window_health" in out and "| 3 |" in out.replace(" ", "").replace("|3|", "| 3 |")
    assert "time_ms" in out
    assert "(2 more row(s)" in out
    assert "error:" in out


def test_ingest_command_exit_codes(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("cli", steps=20))
    db = tmp_path / "r.duckdb"
    assert main(["--db", str(db), "ingest", str(run)]) == 0
    assert "cli" in capsys.readouterr().out
    with open(run / "scalars.csv", "a") as handle:
        handle.write("21,abc\n")
    assert main(["--db", str(db), "ingest", str(run)]) == 2
    captured = capsys.readouterr()
    assert "scalars.csv:23" in captured.out and "1 row(s) could not be loaded" in captured.err
    assert main(["--db", str(db), "ingest", str(tmp_path / "nowhere")]) == 1
    assert main(["--db", str(db), "errors"]) == 0
    out = capsys.readouterr().out
    assert "21,abc" in out and "CAST" in out


def test_console_script_runs(shared_db):
    proc = subprocess.run(
        [sys.executable, "-m", "sb_analysis.cli", "--db", str(shared_db), "runs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "healthy" in proc.stdout


def test_api_steps_smoothing_and_downsampling(shared_db):
    with RunDB(shared_db) as db:
        raw = db.steps("healthy", columns=["loss"])
        smooth = db.steps("healthy", columns=["loss"], smooth=0.1)
        small = db.steps(["healthy", "collapsed"], columns=["loss"], max_points=30)
        router = db.router("collapsed", layer=2)
    roughness = raw["loss"].drop_nulls().diff().abs().sum()
    assert smooth["loss_smooth"].drop_nulls().diff().abs().sum() < 0.5 * roughness
    per_run = small.group_by("run_id").len()["len"]
    assert per_run.max() <= 30 and per_run.min() >= 15 and {"loss_min", "loss_max"} <= set(small.columns)
    assert (small["loss_min"] <= small["loss_max"]).all()
    assert small.filter(pl.col("run_id") == "healthy")["step"][-1] == 300
    assert router.filter(pl.col("step") >= 120)["collapsed_rule"].all()
    with pytest.raises(ValueError):
        RunDB(shared_db).steps("healthy", smooth=2.0)


def test_health_of_unknown_run(shared_db, capsys):
    assert main(["--db", str(shared_db), "health", "ghost"]) == 2  # an unknown run is bad input
    err = capsys.readouterr().err
    assert "ghost" in err and "healthy" in err
