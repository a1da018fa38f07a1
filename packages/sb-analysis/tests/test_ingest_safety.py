"""Runs are never mixed, skipped silently or overwritten, and the CLI answers bad input with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sb_analysis import DatabaseBusyError, RunDB, ingest
from sb_analysis.cli import main
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run
from sb_analysis.wandb_ingest import history_to_frames


def test_same_run_id_from_another_folder_is_refused_without_replace(tmp_path, capsys):
    first = write_synthetic_run(tmp_path / "a", SyntheticRun("r1", steps=30))
    second = write_synthetic_run(tmp_path / "b", SyntheticRun("r1", steps=10, seed=5))
    db = tmp_path / "runs.duckdb"
    assert main(["--db", str(db), "ingest", str(first), "-q"]) == 0
    content = "SELECT (SELECT count(*) FROM steps), (SELECT max(step) FROM steps), (SELECT path FROM runs)"
    with RunDB(db) as rdb:
        before = rdb.sql(content).rows()
    assert main(["--db", str(db), "ingest", str(second), "-q"]) == 1
    err = capsys.readouterr().err
    assert "'r1' is already in the database from another folder" in err and "--replace" in err
    with RunDB(db) as rdb:
        assert rdb.sql(content).rows() == before  # nothing merged
    assert main(["--db", str(db), "ingest", str(second), "-q", "--replace"]) == 0
    with RunDB(db) as rdb:
        assert rdb.sql("SELECT max(step) FROM steps").item() == 10  # the stored run's rows are gone
        assert rdb.sql("SELECT path FROM runs").item() == str(second.resolve())
    assert main(["--db", str(db), "ingest", str(second), "-q"]) == 0  # the same folder again: incremental


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("num_experts", "eight", "a whole number"), ("host", 17, "a string"),
     ("created_at", "yesterday", "ISO 8601"), ("total_steps", True, "a whole number")],
)
def test_bad_run_json_field_is_reported_and_only_that_run_is_skipped(tmp_path, field, value, expected):
    root = tmp_path / "runs"
    good = [write_synthetic_run(root, SyntheticRun(name, steps=10, seed=i)) for i, name in enumerate("xy")]
    bad = write_synthetic_run(root, SyntheticRun("bad", steps=10))
    header = json.loads((bad / "run.json").read_text())
    header[field] = value
    (bad / "run.json").write_text(json.dumps(header))
    report = ingest([root], tmp_path / "runs.duckdb")
    assert sorted(r.run_id for r in report.runs) == ["x", "y"]
    assert len(report.failures) == 1 and report.exit_code == 1
    message = report.failures[0][1]
    assert str(bad / "run.json") in message and repr(field) in message and repr(value) in message
    assert expected in message
    with RunDB(tmp_path / "runs.duckdb") as rdb:
        assert sorted(rdb.runs()["run_id"].to_list()) == ["x", "y"]
    assert all(p.is_dir() for p in good)


def test_wandb_keys_mapping_to_one_column_are_reported_not_overwritten():
    notes: list[str] = []
    steps, router = history_to_frames(
        [
            {"_step": 0, "loss": 1.0, "train/loss": 2.0, "Foo": 3.0, "foo": 4.0,
             "router_layer/0/load_e0": 0.6, "router_layer/0/Load_e0": 0.5},
            {"_step": 1, "loss": 1.5, "train/loss": 2.5, "Foo": 3.5, "foo": 4.5},
        ],
        notes,
    )
    row = steps.row(0, named=True)
    assert row["loss"] == 2.0 and row["loss__2"] == 1.0  # the reference key keeps the column
    assert {row["foo"], row["foo__2"]} == {3.0, 4.0}
    assert steps["loss"].to_list() == [2.0, 2.5] and steps["loss__2"].to_list() == [1.0, 1.5]
    assert router.row(0, named=True)["load"] == [0.6] and router.row(0, named=True)["load_e0__2"] == 0.5
    text = "\n".join(notes)
    assert "'train/loss', 'loss' all map to column 'loss'" in text
    assert "'foo', 'Foo' all map to column 'foo'" in text and "load_e0" in text


def test_in_place_ingest_waits_then_says_what_to_do(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("r", steps=10))
    db = tmp_path / "runs.duckdb"
    ingest([run], db)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        with pytest.raises(DatabaseBusyError, match="close that reader") as caught:
            ingest([run], db, in_place=True, lock_wait_s=0.5)
        assert f"pid {reader.pid}" in str(caught.value) and "without --in-place" in str(caught.value)
        assert main(["--db", str(db), "ingest", str(run), "--in-place", "--wait", "0.3", "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "without --in-place" in err
        assert ingest([run], db).exit_code == 0  # the default (copy + rename) is not blocked by readers
    finally:
        reader.kill()
        reader.wait()
    assert ingest([run], db, in_place=True, lock_wait_s=5).exit_code == 0  # free again


@pytest.mark.parametrize("window", ["-5", "0", "abc"])
def test_health_window_must_be_positive(tmp_path, window, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--db", str(tmp_path / "x.duckdb"), "health", "r", "--window", window])
    assert caught.value.code == 2
    assert "--window" in capsys.readouterr().err


def test_api_health_window_is_refused_not_clamped(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("r", steps=10))
    ingest([run], tmp_path / "runs.duckdb")
    with RunDB(tmp_path / "runs.duckdb") as rdb:
        for window in (-5, 0):
            with pytest.raises(ValueError, match="positive number of steps"):
                rdb.health("r", window=window)
            with pytest.raises(ValueError, match="positive number of steps"):
                rdb.health_windows("r", window=window)


def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["--db", str(a_file / "runs.duckdb"), "ingest", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sb-analysis: error: {a_file}: is a file, not a directory")
    assert err.count("\n") == 1
    assert main(["--db", str(tmp_path / "missing.duckdb"), "runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sb-analysis: error: database") and err.count("\n") == 1
    with pytest.raises(FileNotFoundError):
        main(["--db", str(tmp_path / "missing.duckdb"), "--debug", "runs"])
    monkeypatch.setenv("SB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["--db", str(tmp_path / "missing.duckdb"), "runs"])


def test_command_line_errors_exit_without_traceback(tmp_path):
    """The installed command, as a user runs it: one line on stderr, exit 1/2."""
    cmd = [sys.executable, "-m", "sb_analysis.cli", "--db", str(tmp_path / "none.duckdb")]
    done = subprocess.run([*cmd, "sql", ""], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    db = tmp_path / "runs.duckdb"
    ingest([write_synthetic_run(tmp_path / "runs", SyntheticRun("r", steps=5))], db)
    done = subprocess.run([*cmd[:-1], str(db), "sql", ""], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "empty query" in done.stderr and "Traceback" not in done.stderr
    assert Path(db).is_file()
