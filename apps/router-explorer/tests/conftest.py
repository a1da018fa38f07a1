"""Shared fixtures: sample runs in the documented format, ingested once; AppTest sessions on them."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from router_explorer.sample_data import sample_database
from router_explorer.serving import PAGE_SCRIPT

ENTRY = Path(PAGE_SCRIPT)  # the page script both launchers serve (streamlit_app.py holds the ASGI app)
# A run directory written by sb-train's smoke preset (`sb-train --preset smoke`, 12 steps, 4 layers x 4
# experts, every router feature on; checkpoints left out). Regenerated live by the slow test.
SMOKE_RUN = Path(__file__).resolve().parent / "data" / "smoke-run"
SMOKE_RUN_ID = json.loads((SMOKE_RUN / "run.json").read_text())["run_id"]
TIMEOUT_S = 60.0  # AppTest's default is 3 s; a first run imports plotly/duckdb on a busy CI machine


def copy_smoke_run(root: Path) -> list[Path]:
    """The committed sb-train smoke run, as a run directory under `root`."""
    target = root / "smoke-run"
    shutil.copytree(SMOKE_RUN, target)
    return [target]


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory) -> Path:
    """healthy (domains), collapsing (layer 1 onto expert 3), dense-baseline (no router.csv) and the
    sb-train smoke run."""
    return sample_database(tmp_path_factory.mktemp("explorer"), extra=[copy_smoke_run])


@pytest.fixture(scope="session")
def smoke_run_id() -> str:
    return SMOKE_RUN_ID


@pytest.fixture
def app(sample_db, monkeypatch) -> Callable[..., AppTest]:
    """A fresh session (a new browser tab) on the sample database: app(page=..., run=..., **params)."""
    monkeypatch.setenv("SB_EXPLORER_DB", str(sample_db))
    monkeypatch.delenv("SB_EXPLORER_RUNS", raising=False)

    def open_app(**params: object) -> AppTest:
        at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT_S)
        for name, value in params.items():
            at.query_params[name] = str(value)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_app


def _decode(value: object) -> object:
    """Plotly writes numpy arrays as {"dtype", "bdata"(, "shape")}: back to (nested) lists."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("bdata"), str) and set(value) <= {"dtype", "bdata", "shape"}:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            shape = value["shape"]
            dims = shape if isinstance(shape, list) else str(shape).split(",")
            array = array.reshape([int(d) for d in dims])
        return array.tolist()
    return {k: _decode(v) for k, v in value.items()}


def _charts(at: AppTest) -> dict[str, dict]:
    return {el.key: _decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")}


@pytest.fixture
def charts() -> Callable[[AppTest], dict[str, dict]]:
    """charts(at): the plotly figures (JSON specs) on the page, by their Streamlit key."""
    return _charts
