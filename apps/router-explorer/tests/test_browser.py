"""End to end: `streamlit run` on 127.0.0.1, the routing page opened in Debian's headless Chromium through
playwright-core (e2e/check_page.mjs), heatmap and curves drawn, screenshot saved; the SQL page driven
with refused queries and a read (e2e/check_sql.mjs).

Needs /usr/bin/chromium (or $CHROMIUM) and e2e/node_modules (npm ci); `bash apps/router-explorer/e2e/
setup.sh` installs both. Without them the test is skipped with that instruction.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[1]
E2E_DIR = APP_DIR / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SETUP = "bash apps/router-explorer/e2e/setup.sh"


def _missing() -> str | None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return (f"headless Chromium not found at {CHROMIUM}: install Debian's package with "
                f"`apt-get install -y chromium` (or run `{SETUP}`), or set $CHROMIUM")
    if shutil.which("node") is None:
        return f"node not found: install nodejs >= 20 and npm, then run `{SETUP}`"
    if not (E2E_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core not installed: run `cd apps/router-explorer/e2e && npm ci` (or `{SETUP}`)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer {url} within {timeout_s:.0f} s")


@pytest.fixture
def server(sample_db, tmp_path):
    """The app under `streamlit run` on a free port of 127.0.0.1, headless; yields its base URL."""
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP_DIR), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats",
         "false", "--server.fileWatcherType", "none", "--", "--db", str(sample_db)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SB_EXPLORER_RUNS": ""},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(f"{base}/_stcore/health", proc)
        yield base
    except Exception:
        log.flush()
        print((tmp_path / "streamlit.log").read_text())
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_routing_page_renders_heatmap_and_curves_in_headless_chromium(server, tmp_path):
    screenshot = tmp_path / "routing.png"
    url = f"{server}/?page=routing&run=collapsing"
    done = subprocess.run(
        ["node", str(E2E_DIR / "check_page.mjs"), url, str(screenshot), "90000"],
        cwd=E2E_DIR, capture_output=True, text=True, timeout=180,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"check_page.mjs printed no result (rc {done.returncode}): {done.stderr[-2000:]}"
    found = json.loads(lines[-1])
    assert found["ok"], found
    assert found["title"] == "Routing"
    assert not found["exceptions"], found["exceptions"]
    assert found["heatmapImages"] >= 1
    assert found["linePaths"] >= 4 * 4  # 4 layer lines in each of the 4 metric charts, at least
    assert any("heatmap" in types for types in found["traceTypes"])
    assert found["plots"] >= 6  # heatmap, served/demanded, 4 metrics, schedule
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_sql_page_refuses_file_access_in_headless_chromium(server, sample_db, tmp_path):
    root = sample_db.parent
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    stolen = tmp_path / "stolen.csv"
    queries = [f"COPY (SELECT * FROM runs) TO '{stolen}'",
               "SELECT content FROM read_text('/etc/passwd')",
               f"COPY (SELECT 1 AS x) TO '{sample_db}' (USE_TMP_FILE false)",
               "SELECT count(*) AS n FROM runs"]
    done = subprocess.run(
        ["node", str(E2E_DIR / "check_sql.mjs"), server, "90000", *queries],
        cwd=E2E_DIR, capture_output=True, text=True, timeout=240,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"check_sql.mjs printed no result (rc {done.returncode}): {done.stderr[-2000:]}"
    found = json.loads(lines[-1])
    assert found["ok"], found
    *refused, read = found["results"]
    for result in refused:
        assert result["error"].startswith("Not run: refused"), result
        assert not result["exceptions"], result
    assert not read["error"] and read["caption"].startswith("1 row(s)"), read
    assert not stolen.exists()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
