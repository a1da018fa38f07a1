"""Shared fixtures: sample runs in the documented format, ingested once; AppTest sessions on them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from router_explorer.sample_data import sample_database

ENTRY = Path(__file__).resolve().parents[1] / "streamlit_app.py"
TIMEOUT_S = 60.0  # AppTest's default is 3 s; a first run imports plotly/duckdb on a busy CI machine


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory) -> Path:
    """healthy (domains), collapsing (layer 1 onto expert 3) and dense-baseline (no router.csv)."""
    return sample_database(tmp_path_factory.mktemp("explorer"))


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
