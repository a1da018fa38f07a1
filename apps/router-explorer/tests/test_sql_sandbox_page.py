"""The SQL page under AppTest: every attack is refused with one line, no file appears, the database and the
runs' CSVs stay byte-identical, and the page keeps answering reads."""

from __future__ import annotations

from pathlib import Path

import pytest

ATTACKS = {
    "read_text": "SELECT content FROM read_text('/etc/passwd')",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "copy_over_db": "COPY (SELECT 1 AS x) TO '{db}' (USE_TMP_FILE false)",
    "copy_over_csv": "COPY (SELECT 1 AS x) TO '{root}/runs/healthy/scalars.csv'",
    "copy_new_file": "COPY (SELECT * FROM steps) TO '{root}/stolen.csv'",
    "attach_rw": "ATTACH '{root}/evil.duckdb' AS evil (READ_WRITE)",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set_external": "SET enable_external_access = true",
    "pragma_write": "PRAGMA profiling_output = '{root}/profile.json'",
    "multi_hiding_write": "SELECT 1; COPY (SELECT 1 AS x) TO '{root}/hidden.csv'",
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_sql_page_refuses_attack(name, app, sample_db):
    root = sample_db.parent
    before = snapshot(root)
    at = app(page="sql")
    at.text_area(key="sql_query").set_value(ATTACKS[name].format(db=sample_db, root=root))
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert message.startswith("Not run: refused") and "\n" not in message, message
    assert snapshot(root) == before  # no file appeared, nothing changed
    at.text_area(key="sql_query").set_value("SELECT count(*) AS n FROM runs")
    at.button[0].click().run()  # the page keeps working
    assert not at.error and at.dataframe[0].value["n"][0] == 4
    at.sidebar.radio[0].set_value("Runs").run()  # and so does the rest of the app
    assert at.title[0].value == "Runs" and not at.exception


def test_sql_page_stops_a_runaway_query(app, monkeypatch):
    from dataclasses import replace

    from router_explorer import data

    monkeypatch.setattr(data, "LIMITS", replace(data.LIMITS, timeout_s=0.5))
    at = app(page="sql")
    at.text_area(key="sql_query").set_value("SELECT count(*) FROM range(100000000000) a")
    at.button[0].click().run()
    assert at.error[0].value.startswith("Stopped: the query ran longer than 0.5 s")


def test_a_corrupted_database_gives_a_message_not_a_traceback(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from router_explorer.serving import PAGE_SCRIPT

    broken = tmp_path / "runs.duckdb"
    broken.write_bytes(b"\x00\x01\x02\x03")  # what the unsandboxed page could once turn the database into
    monkeypatch.setenv("SB_EXPLORER_DB", str(broken))
    monkeypatch.delenv("SB_EXPLORER_RUNS", raising=False)
    at = AppTest.from_file(PAGE_SCRIPT, default_timeout=60)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and str(broken) in at.error[0].value
