from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from sb_analysis import RunDB, ingest
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run


def counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("runs", "steps", "router_layers", "domain_load", "run_config")
        }
    finally:
        con.close()


def test_ingest_loads_every_table(shared_db):
    with RunDB(shared_db) as db:
        runs = db.runs()
        assert set(runs["run_id"]) == {"healthy", "collapsed", "peaky"}
        assert db.sql("SELECT count(*) AS n FROM steps WHERE run_id = 'healthy'")["n"][0] == 301
        assert db.sql("SELECT count(*) AS n FROM router_layers WHERE run_id = 'healthy'")["n"][0] == 300 * 4
        experts = db.experts("healthy", step=10)
        assert experts.height == 4 * 8
        assert abs(experts.filter(experts["layer"] == 0)["load"].sum() - 1.0) < 1e-6
        cfg = db.config()
        assert cfg.schema["optim.lr_embed"].is_float() and cfg.schema["seed"].is_integer()
        assert cfg.schema["router.balance"] == cfg.schema["run_id"]  # strings stay text
        summary = runs.filter(runs["run_id"] == "healthy").row(0, named=True)
        assert summary["state"] == "finished" and summary["last_step"] == 300
        assert summary["final_val_loss"] is not None and summary["tokens_per_s"] > 0


def test_reingest_is_idempotent(run_root, tmp_path):
    db = tmp_path / "r.duckdb"
    ingest([run_root], db)
    before = counts(db)
    report = ingest([run_root], db)
    assert report.exit_code == 0
    assert all(sum(r.new_rows.values()) == 0 for r in report.runs)
    assert counts(db) == before


def test_incremental_ingest_reads_only_appended_lines(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("live", steps=120, finished=False))
    scalars = run / "scalars.csv"
    lines = scalars.read_text().splitlines(keepends=True)
    # the trainer is at step 59 and in the middle of writing step 60's row
    scalars.write_text("".join(lines[:61]) + lines[61][:9])
    db = tmp_path / "r.duckdb"
    first = ingest([run], db)
    assert first.runs[0].new_rows["steps"] == 60
    assert any("INCOMPLETE LAST LINE" in w for w in first.runs[0].warnings)
    assert first.exit_code == 0  # a line still being written is not an error
    with open(scalars, "a") as handle:  # the trainer finishes the line and writes more
        handle.write(lines[61][9:] + "".join(lines[62:90]))
    second = ingest([run], db)
    assert second.runs[0].new_rows["steps"] == 29
    assert second.runs[0].replaced_rows["steps"] == 0
    with RunDB(db) as rdb:
        steps = rdb.sql("SELECT step FROM steps WHERE run_id = 'live' ORDER BY step")["step"].to_list()
        assert steps == list(range(89))
        file_state = rdb.sql("SELECT lines_done FROM ingest_files WHERE path LIKE '%scalars.csv'")
        assert file_state["lines_done"][0] == 90


def test_resumed_run_later_rows_win(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("resumed", steps=50))
    scalars = run / "scalars.csv"
    header = scalars.read_text().splitlines()[0].split(",")
    row = dict.fromkeys(header, "")
    row.update(step="10", time_ms="1234.5", loss="99.0")
    with open(scalars, "a") as handle:
        handle.write(",".join(row[c] for c in header) + "\n")
    db = tmp_path / "r.duckdb"
    ingest([run], db)
    with RunDB(db) as rdb:
        got = rdb.sql("SELECT loss, count(*) OVER () AS n FROM steps WHERE step = 10")
        assert got["loss"].to_list() == [99.0]


def test_first_ingest_of_a_batch_with_resumed_and_malformed_runs(tmp_path):
    """A new database takes the direct-insert path; runs with repeated or empty keys are loaded again
    by the staged path, and every bad row is reported once, with its file and line."""
    root = tmp_path / "runs"
    write_synthetic_run(root, SyntheticRun("clean", steps=30, num_layers=2))
    resumed = write_synthetic_run(root, SyntheticRun("resumed", steps=30, num_layers=2))
    broken = write_synthetic_run(root, SyntheticRun("broken", steps=30, num_layers=2))
    router = resumed / "router.csv"
    lines = router.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    step_10 = [line for line in lines[1:] if line.split(",")[0] == "10"]
    resumed_rows = []
    for line in step_10:  # the resumed trainer logs step 10 again, with other values
        cells = line.rstrip("\n").split(",")
        cells[header.index("topk_prob_mean")] = "0.99"
        resumed_rows.append(",".join(cells) + "\n")
    router.write_text("".join(lines) + "".join(resumed_rows))
    scalars = broken / "scalars.csv"
    text = scalars.read_text()
    n_lines, width = len(text.splitlines()), len(text.splitlines()[0].split(","))
    with open(scalars, "a") as handle:
        handle.write("30,100.0,abc" + "," * (width - 3) + "\n")  # not a number
        handle.write("," * (width - 1) + "\n")  # empty key
    db = tmp_path / "r.duckdb"
    report = ingest([root], db)
    by_run = {r.run_id: r for r in report.runs}
    assert by_run["clean"].new_rows == {"steps": 31, "router_layers": 60, "domain_load": 0}
    assert by_run["resumed"].new_rows["router_layers"] == 60
    assert not by_run["clean"].errors and not by_run["resumed"].errors
    errors = [(Path(e.path).name, e.line, e.error_type) for e in by_run["broken"].errors]
    assert len(errors) == 2
    assert set(errors) == {("scalars.csv", n_lines + 1, "CAST"), ("scalars.csv", None, "EMPTY KEY")}
    assert by_run["broken"].new_rows["steps"] == 31
    with RunDB(db) as rdb:
        got = rdb.sql(
            "SELECT layer, topk_prob_mean FROM router_layers WHERE run_id = 'resumed' AND step = 10 "
            "ORDER BY layer"
        )
        assert got["topk_prob_mean"].to_list() == [0.99, 0.99]  # the later rows won
        steps = rdb.sql("SELECT run_id, count(*) AS n, max(n_layers) AS l FROM router_steps GROUP BY run_id")
        assert sorted(steps.rows()) == [("broken", 30, 2), ("clean", 30, 2), ("resumed", 30, 2)]
        assert rdb.sql("SELECT count(*) AS n FROM ingest_errors")["n"][0] == 2
    assert counts(db)["router_layers"] == 180


def test_malformed_rows_reported_with_file_and_line_rest_loads(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("bad", steps=40, finished=False))
    db = tmp_path / "r.duckdb"
    ingest([run], db)
    before = counts(db)
    scalars = run / "scalars.csv"
    n_lines = len(scalars.read_text().splitlines())
    header = scalars.read_text().splitlines()[0].split(",")

    def line(step, **values):
        row = dict.fromkeys(header, "")
        row.update(step=str(step), time_ms="100.0", **values)
        return ",".join(row[c] for c in header)

    with open(scalars, "a") as handle:
        handle.write(line(40, loss="1.5") + "\n")
        handle.write(line(41, loss="abc") + "\n")  # not a number
        handle.write("42,100.0\n")  # missing columns
        handle.write(line(43, loss="1.4") + ",7\n")  # one column too many
        handle.write(line(44, loss="1.3") + "\n")
    report = ingest([run], db)
    assert report.exit_code == 2
    errors = {(Path(e.path).name, e.line, e.error_type) for e in report.row_errors}
    assert errors == {
        ("scalars.csv", n_lines + 2, "CAST"),
        ("scalars.csv", n_lines + 3, "MISSING COLUMNS"),
        ("scalars.csv", n_lines + 4, "TOO MANY COLUMNS"),
    }
    after = counts(db)
    assert after["steps"] == before["steps"] + 2  # steps 40 and 44 loaded, nothing lost
    with RunDB(db) as rdb:
        stored = rdb.errors("bad")
        assert sorted(stored["line"].to_list()) == [n_lines + 2, n_lines + 3, n_lines + 4]
        assert "abc" in stored.filter(stored["error_type"] == "CAST")["raw_line"][0]


def test_bad_header_is_reported_other_files_load(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("hdr", steps=20))
    router = run / "router.csv"
    text = router.read_text().replace("load_e3,", "load_e9,", 1)
    router.write_text(text)
    report = ingest([run], tmp_path / "r.duckdb")
    assert report.exit_code == 2
    (err,) = report.row_errors
    assert err.line == 1 and err.error_type == "BAD HEADER" and "load_e3" in err.message
    assert report.runs[0].new_rows["steps"] == 21


def test_truncated_row_of_finished_run_is_an_error(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("cut", steps=20))
    scalars = run / "scalars.csv"
    scalars.write_bytes(scalars.read_bytes()[:-7])
    report = ingest([run], tmp_path / "r.duckdb")
    assert report.exit_code == 2
    assert report.row_errors[0].error_type == "INCOMPLETE LAST LINE"
    assert report.runs[0].new_rows["steps"] == 20


def test_segments_are_read_in_order(tmp_path):
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("seg", steps=20))
    (run / "scalars.1.csv").write_text("step,time_ms,loss,new_metric\n20,5000.0,2.5,0.5\n21,5100.0,2.4,0.6\n")
    db = tmp_path / "r.duckdb"
    ingest([run], db)
    with RunDB(db) as rdb:
        got = rdb.sql("SELECT step, loss, new_metric FROM steps WHERE step >= 20 ORDER BY step")
        assert got["new_metric"].to_list() == [0.5, 0.6]  # a new column appears as a DOUBLE metric
        assert got["loss"].to_list() == [2.5, 2.4]  # the later segment wins for step 20


def test_failed_ingest_changes_nothing(run_root, tmp_path, monkeypatch):
    db = tmp_path / "r.duckdb"
    ingest([run_root / "healthy"], db)
    before = db.read_bytes()
    ingest_module = importlib.import_module("sb_analysis.ingest")  # the module, not the function

    def boom(con):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ingest_module, "create_views", boom)
    with pytest.raises(RuntimeError):
        ingest([run_root / "collapsed"], db)
    assert db.read_bytes() == before
    assert not list(tmp_path.glob(".r.duckdb.ingest-*"))


def test_readers_are_not_blocked_by_an_ingest(run_root, tmp_path):
    db = tmp_path / "r.duckdb"
    ingest([run_root / "healthy"], db)
    reader = RunDB(db)  # a reader (e.g. the explorer) holds the file open
    report = ingest([run_root / "collapsed"], db)
    assert report.exit_code == 0
    assert reader.runs().height == 1  # still reads its consistent snapshot
    reader.close()
    with RunDB(db) as fresh:
        assert fresh.runs().height == 2


def test_unknown_inputs_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    bad_version = write_synthetic_run(tmp_path / "runs", SyntheticRun("v2", steps=5))
    header = json.loads((bad_version / "run.json").read_text())
    header["format_version"] = 2
    (bad_version / "run.json").write_text(json.dumps(header))
    report = ingest([tmp_path / "empty", tmp_path / "nope", bad_version], tmp_path / "r.duckdb")
    assert report.exit_code == 1
    messages = " ".join(m for _, m in report.failures)
    assert "not a run directory" in messages and "no such file" in messages
    assert "format_version 2 is not supported" in messages


def test_run_directory_of_copies_is_refused_then_replaced(run_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_root / "healthy", copy)
    db = tmp_path / "r.duckdb"
    ingest([run_root / "healthy"], db)
    report = ingest([copy], db)  # same run id from another folder: refused, never merged
    assert report.exit_code == 1 and not report.runs
    assert "--replace" in report.failures[0][1]
    report = ingest([copy], db, replace=True)
    assert report.exit_code == 0 and report.runs[0].new_rows["steps"] == 301
    assert counts(db)["steps"] == 301
    with RunDB(db) as rdb:
        assert rdb.sql("SELECT path FROM runs").item() == str(copy.resolve())


def test_changed_view_definitions_rebuild_derived_data(run_root, tmp_path):
    db = tmp_path / "r.duckdb"
    ingest([run_root / "collapsed"], db)
    with RunDB(db) as rdb:
        before = rdb.sql("SELECT * FROM router_steps ORDER BY step")
        health = rdb.health("collapsed")
    con = duckdb.connect(str(db))
    con.execute("UPDATE sb_meta SET value = 'older-version' WHERE key = 'views'")
    con.execute("UPDATE router_layers SET health_score = NULL")
    con.execute("DELETE FROM router_steps")
    con.close()
    ingest([run_root / "collapsed"], db)
    with RunDB(db) as rdb:
        assert rdb.sql("SELECT * FROM router_steps ORDER BY step").equals(before)
        assert rdb.health("collapsed").equals(health)


def test_reader_of_an_in_place_writer_gets_a_clear_busy_error(run_root, tmp_path):
    import subprocess
    import sys
    import time

    from sb_analysis import DatabaseBusyError

    db = tmp_path / "r.duckdb"
    ingest([run_root / "healthy"], db)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
         "time.sleep(30)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        start = time.monotonic()
        with pytest.raises(DatabaseBusyError, match="locked by another process"):
            RunDB(db, timeout_s=0.5)
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()
    with RunDB(db) as rdb:                      # free again once the writer is gone
        assert rdb.runs().height == 1
