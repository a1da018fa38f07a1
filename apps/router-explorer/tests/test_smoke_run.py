"""Every page on a run written by sb-train's smoke preset (the committed copy; the slow test writes a
fresh one with the trainer and renders it too)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from router_explorer.serving import PAGE_SCRIPT as ENTRY
from sb_analysis import ingest

PAGE_CHARTS = {
    "runs": set(),
    "losses": {"losses_chart"},
    "routing": {"routing_heatmap", "routing_served", "routing_line_entropy_mean", "routing_line_load_cv2",
                "routing_line_topk_prob_mean", "routing_line_max_logit", "routing_schedule"},
    "health": {"health_score_map", "health_maxfrac_map"},
    "domains": {"domains_maps", "domains_spec"},
    "sql": set(),
}


@pytest.mark.parametrize("page", list(PAGE_CHARTS))
def test_every_page_renders_the_smoke_run(app, charts, smoke_run_id, page):
    at = app(page=page, run=smoke_run_id)
    assert at.sidebar.selectbox[0].value == smoke_run_id
    assert not at.error, [e.value for e in at.error]
    assert PAGE_CHARTS[page] <= set(charts(at))
    if page == "routing":
        figs = charts(at)
        z = np.array(figs["routing_heatmap"]["data"][0]["z"], dtype=float)
        assert z.shape == (4, 4)  # 4 layers x 4 experts
        np.testing.assert_allclose(np.nansum(z, axis=1), 1.0, atol=1e-5)
        active = figs["routing_schedule"]["data"][0]
        assert active["name"] == "active_experts"
        assert min(active["y"]) == 1 and max(active["y"]) == 4  # the smoke preset's activation schedule
    if page == "domains":  # the smoke run's validation data carry two labels: prose and code
        maps = charts(at)["domains_maps"]
        assert [a["text"] for a in maps["layout"]["annotations"]] == ["code", "prose"]
        for trace in maps["data"]:
            z = np.array(trace["z"], dtype=float)
            assert z.shape == (4, 4)  # 4 layers x 4 experts
            np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-9)  # each domain's tokens over the experts
        assert "NMI at step 12: layer 0:" in at.caption[0].value
    if page == "health":
        assert at.metric  # severity counts


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sb_train") is None, reason="sb-train is not installed")
def test_fresh_sb_train_smoke_run_renders(tmp_path, monkeypatch):
    """Train the smoke preset now (~40 s on 2 cores), ingest it, render the routing and losses pages."""
    out = tmp_path / "runs"
    subprocess.run(
        [sys.executable, "-m", "sb_train", "--preset", "smoke", "--set", f'run.out_dir="{out}"'],
        check=True, timeout=600, capture_output=True,
    )
    db = tmp_path / "runs.duckdb"
    assert ingest([out], db).exit_code == 0
    run_id = next(out.iterdir()).name
    monkeypatch.setenv("SB_EXPLORER_DB", str(db))
    monkeypatch.delenv("SB_EXPLORER_RUNS", raising=False)
    entry = str(ENTRY)
    assert (next(out.iterdir()) / "domains.csv").is_file()
    for page in ("losses", "routing", "health", "domains"):
        at = AppTest.from_file(entry, default_timeout=60)
        at.query_params["page"] = page
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.sidebar.selectbox[0].value == run_id
        assert at.get("plotly_chart")


def test_smoke_run_specialisation_view_equals_the_logged_nmi(sample_db, smoke_run_id):
    """sb-analysis recomputes each layer's NMI from the tokens of domains.csv; sb-train logged it in `nmi`."""
    from sb_analysis import RunDB

    with RunDB(sample_db) as db:
        both = db.sql(
            "SELECT s.step, s.layer, s.specialization, any_value(d.nmi) AS nmi, sum(d.tokens) AS tokens "
            "FROM domain_specialization s JOIN domain_load d USING (run_id, step, layer) "
            f"WHERE run_id = '{smoke_run_id}' GROUP BY ALL ORDER BY s.step, s.layer"
        )
    assert both.height == 4 * 4  # validations at steps 0, 4, 8, 12 x 4 layers
    np.testing.assert_allclose(both["specialization"], both["nmi"], atol=1e-6)
    assert set(both["tokens"]) == {2048}  # data.domain_val_tokens of the smoke preset, top-1, dropless
