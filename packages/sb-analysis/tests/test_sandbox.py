"""The SQL sandbox through every sb-analysis surface (RunDB.sql, `sb-analysis sql`, `sb-analysis shell`):
each attack is refused with one line, no file appears, the database and the run's CSVs stay byte-identical,
and reads keep working."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sb_analysis import Limits, QueryTimeout, RefusedStatement, RunDB, ingest
from sb_analysis.cli import main
from sb_analysis.shell import run_shell
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run

ATTACKS = {
    "read_text": "SELECT content FROM read_text('/etc/passwd')",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_blob_db": "SELECT * FROM read_blob('{db}')",
    "copy_over_db": "COPY (SELECT 1 AS x) TO '{db}'",
    "copy_over_db_no_tmp": "COPY (SELECT 1 AS x) TO '{db}' (USE_TMP_FILE false)",
    "copy_over_csv": "COPY (SELECT 1 AS x) TO '{run}/scalars.csv' (HEADER false)",
    "copy_new_file": "COPY steps TO '{root}/stolen.csv'",
    "export": "EXPORT DATABASE '{root}/exported'",
    "attach_rw": "ATTACH '{root}/evil.duckdb' AS evil (READ_WRITE)",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set_external": "SET enable_external_access = true",
    "unlock": "SET lock_configuration = false",
    "pragma_profiling_output": "PRAGMA profiling_output = '{root}/profile.json'",
    "pragma_enable_profiling": "PRAGMA enable_profiling = 'json'",
    "multi_hiding_write": "SELECT 1; COPY (SELECT 1 AS x) TO '{root}/hidden.csv'",
    "explain_analyze_copy": "EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/e.csv'",
    "create_temp": "CREATE TEMP TABLE t AS SELECT 1",
    "call_checkpoint": "CALL checkpoint()",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sandbox")
    run = write_synthetic_run(root / "runs", SyntheticRun("victim", steps=20))
    db = root / "runs.duckdb"
    assert ingest([run], db).exit_code == 0
    return {"root": root, "run": run, "db": db}


STEP_ROWS = 21  # steps 0..20 of the synthetic run


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def attack_sql(name: str, site: dict[str, Path]) -> str:
    return ATTACKS[name].format(**{k: str(v) for k, v in site.items()})


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_api_refuses_and_nothing_changes(name, site):
    before = snapshot(site["root"])
    with RunDB(site["db"]) as db:
        with pytest.raises(RefusedStatement, match="refused") as caught:
            db.sql(attack_sql(name, site))
        assert "\n" not in str(caught.value)
        assert db.sql("SELECT count(*) AS n FROM steps").item() == STEP_ROWS  # still works afterwards
    assert snapshot(site["root"]) == before


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cli_sql_refuses_with_one_line_and_exit_2(name, site, capsys):
    before = snapshot(site["root"])
    assert main(["--db", str(site["db"]), "sql", attack_sql(name, site)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sb-analysis: error: refused") and err.count("\n") == 1, err
    assert snapshot(site["root"]) == before
    assert main(["--db", str(site["db"]), "sql", "SELECT count(*) FROM runs"]) == 0


def test_shell_refuses_every_attack_and_keeps_answering(site, capsys):
    before = snapshot(site["root"])
    script = ";\n".join(attack_sql(n, site) for n in sorted(ATTACKS) if ";" not in ATTACKS[n])
    script += ";\nSELECT 41 + 1 AS answer;\n" + attack_sql("multi_hiding_write", site) + ";\n"
    with RunDB(site["db"]) as db:
        assert run_shell(db, stdin=io.StringIO(script)) == 0
    out = capsys.readouterr().out
    assert out.count("error: refused") == len(ATTACKS)
    assert "42" in out
    assert snapshot(site["root"]) == before


def test_reads_are_allowed(site):
    with RunDB(site["db"]) as db:
        assert db.sql("WITH a AS (SELECT 1 AS x) SELECT x FROM a").item() == 1
        assert "run_id" in db.sql("DESCRIBE steps")["column_name"].to_list()
        assert "steps" in db.sql("SHOW TABLES")["name"].to_list()
        assert db.sql("PRAGMA table_info('runs')").height > 5
        assert db.sql("EXPLAIN SELECT * FROM steps").height >= 1
        assert db.sql("SELECT * FROM run_summary").height == 1  # the views work under the sandbox
        assert db.health("victim").height >= 1
        assert db.sql("SELECT ? AS p", [7]).item() == 7


@pytest.mark.parametrize("query", ["", "   ", "-- only a comment", ";"])
def test_empty_query_gets_a_message(query, site, capsys):
    assert main(["--db", str(site["db"]), "sql", query]) == 2
    err = capsys.readouterr().err
    assert "empty query" in err or "no statement" in err


def test_timeout_and_row_cap(site):
    with RunDB(site["db"], limits=Limits(timeout_s=0.5, max_rows=100, memory_limit="256MB", threads=1)) as db:
        with pytest.raises(QueryTimeout, match=r"longer than 0\.5 s"):
            db.sql("SELECT count(*) FROM range(100000000000) a")
        result = db.query("SELECT * FROM range(1000000)")
        assert result.truncated and result.frame.height == 100
        assert db.sql("SELECT current_setting('threads') AS t").item() == 1
        assert db.sql("SELECT 1 AS x").item() == 1  # usable after an interrupt


def test_raw_cursor_is_sandboxed_too(site):
    """`RunDB.connection` skips the statement check, but the connection itself still cannot touch files
    or reconfigure itself; not even its own database file, which DuckDB's enable_external_access=false
    alone leaves writable (COPY ... TO the database with USE_TMP_FILE false)."""
    before = snapshot(site["root"])
    with RunDB(site["db"]) as db:
        cursor = db.connection
        for statement in (attack_sql("copy_over_db_no_tmp", site), attack_sql("read_blob_db", site),
                          attack_sql("copy_new_file", site), attack_sql("read_text", site),
                          attack_sql("set_external", site), attack_sql("attach_rw", site)):
            with pytest.raises(Exception, match=r"disabled|locked"):
                cursor.execute(statement)
    assert snapshot(site["root"]) == before
