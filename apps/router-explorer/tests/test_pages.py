"""Every page rendered by Streamlit's AppTest on real run directories (sb-analysis ingest of files in the
documented format), including the interactions between pages."""

from __future__ import annotations

import numpy as np

from router_explorer.pages.health import finding_link
from router_explorer.serving import PAGE_SCRIPT as ENTRY


def _sidebar_text(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def test_runs_page_lists_runs_with_key_figures_and_filters(app, smoke_run_id):
    at = app(page="runs")
    assert at.title[0].value == "Runs"
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {"healthy", "collapsing", "dense-baseline", smoke_run_id}
    assert {"final_loss", "best_val_loss", "health_score_final", "minutes"} <= set(table.columns)
    collapsing = table[table["run_id"] == "collapsing"].iloc[0]
    assert collapsing["collapsed_layers_final"] == 1
    assert 3.5 < collapsing["final_loss"] < 4.0
    at.multiselect(key="runs_presets").select("ablation").run()
    assert list(at.dataframe[0].value["run_id"]) == ["collapsing"]
    assert "1 of 4 run(s)" in " ".join(c.value for c in at.caption)
    assert "page script ran in" in _sidebar_text(at)


def test_runs_page_loss_filter_and_compare_selection_reach_losses_page(app):
    at = app(page="runs")
    lo, hi = at.slider(key="runs_loss").value
    at.slider(key="runs_loss").set_value((lo, (lo + hi) / 2)).run()
    shown = set(at.dataframe[0].value["run_id"])
    assert shown and "dense-baseline" not in shown  # its final loss (5.1) is the highest
    at.multiselect(key="runs_compare").set_value(["healthy", "collapsing"]).run()
    at.sidebar.radio[0].set_value("Losses").run()
    assert at.multiselect(key="losses_runs").value == ["healthy", "collapsing"]


def test_losses_page_overlays_runs_on_step_time_and_token_axes(app, charts):
    at = app(page="losses", run="healthy")
    at.multiselect(key="losses_runs").set_value(["healthy", "collapsing"]).run()
    fig = charts(at)["losses_chart"]
    names = [t["name"] for t in fig["data"]]
    for run in ("healthy", "collapsing"):
        assert f"{run} train" in names and f"{run} train (smoothed)" in names and f"{run} val" in names
    assert fig["layout"]["xaxis"]["title"]["text"] == "step"
    val = next(t for t in fig["data"] if t["name"] == "healthy val")
    assert list(val["x"]) == [0, 20, 40, 60, 80, 100, 120]  # val every 20 steps and the final one

    at.radio(key="losses_x").set_value("tokens").run()
    fig = charts(at)["losses_chart"]
    train = next(t for t in fig["data"] if t["name"] == "healthy train")
    assert fig["layout"]["xaxis"]["title"]["text"] == "tokens"
    assert train["x"][0] == 98304  # tokens after step 0 = tokens_per_step

    at.radio(key="losses_x").set_value("time").run()
    at.slider(key="losses_smooth").set_value(0.0).run()
    fig = charts(at)["losses_chart"]
    assert "training time" in fig["layout"]["xaxis"]["title"]["text"]
    assert not any("smoothed" in t["name"] for t in fig["data"])
    train = next(t for t in fig["data"] if t["name"] == "healthy train")
    assert 0 < train["x"][-1] < 2  # minutes: 120 steps x ~0.5 s


def test_routing_page_heatmap_lines_served_demanded_and_schedule(app, charts):
    at = app(page="routing", run="collapsing")
    figs = charts(at)
    heat = figs["routing_heatmap"]["data"][0]
    assert heat["type"] == "heatmap"
    z = np.array(heat["z"], dtype=float)
    assert z.shape == (4, 8)
    assert z[1, 3] > 0.9  # layer 1 collapsed onto expert 3 at the last step
    np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-6)
    for metric in ("entropy_mean", "load_cv2", "topk_prob_mean", "max_logit"):
        assert len(figs[f"routing_line_{metric}"]["data"]) == 4  # one line per layer
    served = figs["routing_served"]["data"]
    assert [t["name"] for t in served] == ["demanded", "served"]
    schedule = figs["routing_schedule"]
    assert [t["name"] for t in schedule["data"]] == ["active_experts", "router_temp", "logit_cap"]

    at.select_slider(key="routing_step").set_value(10).run()
    heat = charts(at)["routing_heatmap"]
    assert "step 10" in heat["layout"]["title"]["text"]
    assert np.array(heat["data"][0]["z"], dtype=float)[1, 3] < 0.5  # before the collapse (step 48)

    at.selectbox(key="routing_layer").set_value(1).run()
    at.radio(key="routing_family").set_value("importance").run()
    figs = charts(at)
    assert "importance" in figs["routing_heatmap"]["layout"]["title"]["text"]
    assert "layer 1" in figs["routing_served"]["layout"]["title"]["text"]
    widths = [t["line"]["width"] for t in figs["routing_line_entropy_mean"]["data"]]
    assert widths[1] == 3 and widths.count(3) == 1  # the chosen layer is drawn bold


def test_routing_page_without_router_data(app):
    at = app(page="routing", run="dense-baseline")
    assert "logged no router metrics" in at.info[0].value


def test_health_finding_opens_its_layer_and_steps_on_the_routing_page(app, charts):
    at = app(page="health", run="collapsing")
    text = " ".join(m.value for m in at.markdown)
    assert "collapse" in text and "layer 1 collapsed onto expert 3 from step 48" in text
    assert {"health_score_map", "health_maxfrac_map"} <= set(charts(at))
    button = next(b for b in at.button if b.key and b.key.startswith("health_open_"))
    button.click().run()
    assert at.sidebar.radio[0].value == "Routing"
    assert at.selectbox(key="routing_layer").value == 1
    assert at.select_slider(key="routing_step").value == 48
    assert "Highlighted: steps 48–119" in " ".join(c.value for c in at.caption)
    line = charts(at)["routing_line_entropy_mean"]
    assert any(s["type"] == "rect" and s["x0"] == 48 for s in line["layout"]["shapes"])


def test_health_link_query_string_opens_routing_focus(app):
    link = finding_link("collapsing", 1, 50, 90)
    assert link == "?page=routing&run=collapsing&layer=1&step=50&step_to=90"
    at = app(page="routing", run="collapsing", layer=1, step=50, step_to=90)
    assert at.select_slider(key="routing_step").value == 50
    assert at.selectbox(key="routing_layer").value == 1


def test_health_page_of_a_healthy_run(app):
    at = app(page="health", run="healthy")
    assert [m.value for m in at.metric if m.label == "bad"] == ["0"]


def test_domains_page_with_and_without_labels(app, charts):
    at = app(page="domains", run="healthy")
    figs = charts(at)
    maps = figs["domains_maps"]["data"]
    assert len(maps) == 3 and all(t["type"] == "heatmap" for t in maps)  # code, math, prose
    z = np.array(maps[0]["z"], dtype=float)
    assert z.shape == (4, 8)
    np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-6)  # frac_of_domain sums to 1 per layer
    assert len(figs["domains_spec"]["data"]) == 4
    at.radio(key="domains_value").set_value("frac_of_expert").run()
    assert charts(at)["domains_maps"]["data"][0]["z"] != maps[0]["z"]
    at.sidebar.selectbox[0].set_value("collapsing").run()
    assert "no domain labels" in at.info[0].value


def test_sql_page_runs_queries_and_reports_errors(app, smoke_run_id):
    at = app(page="sql")
    assert set(at.dataframe[0].value["run_id"]) == {"healthy", "collapsing", "dense-baseline", smoke_run_id}
    at.text_area(key="sql_query").set_value(
        "SELECT layer, count(*) AS n FROM router_layers WHERE run_id = 'collapsing' GROUP BY layer ORDER BY 1"
    )
    at.button[0].click().run()
    result = at.dataframe[0].value
    assert list(result["layer"]) == [0, 1, 2, 3] and set(result["n"]) == {120}
    at.text_area(key="sql_query").set_value("DELETE FROM runs")
    at.button[0].click().run()
    assert "refused" in at.error[0].value and "DELETE writes" in at.error[0].value
    at.text_area(key="sql_query").set_value("SELEC 1")
    at.button[0].click().run()
    assert "does not parse" in at.error[0].value and "syntax" in at.error[0].value.lower()


def test_missing_database_explains_how_to_start(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest


    monkeypatch.setenv("SB_EXPLORER_DB", str(tmp_path / "nope.duckdb"))
    monkeypatch.delenv("SB_EXPLORER_RUNS", raising=False)
    at = AppTest.from_file(str(ENTRY),
                           default_timeout=60)
    at.run()
    assert "does not exist" in at.error[0].value
    assert "--runs" in " ".join(m.value for m in at.markdown)


def test_run_directories_are_ingested_at_start(tmp_path, monkeypatch, charts):
    from streamlit.testing.v1 import AppTest

    from router_explorer.sample_data import synthetic_runs

    synthetic_runs(tmp_path / "runs", steps=40)
    db = tmp_path / "fresh.duckdb"
    monkeypatch.setenv("SB_EXPLORER_DB", str(db))
    monkeypatch.setenv("SB_EXPLORER_RUNS", str(tmp_path / "runs"))
    entry = str(ENTRY)
    at = AppTest.from_file(entry, default_timeout=60)
    at.query_params["page"] = "routing"
    at.query_params["run"] = "collapsing"
    at.run()
    assert not at.exception
    assert db.is_file()
    assert "2 run(s)" in " ".join(c.value for c in at.sidebar.caption)
    assert np.array(charts(at)["routing_heatmap"]["data"][0]["z"]).shape == (4, 8)


def test_follow_mode_polls_the_database(app):
    at = app(page="runs")
    at.sidebar.toggle(key="follow").set_value(True).run()
    assert not at.exception
    assert any("following: checked" in c.value for c in at.sidebar.caption)
    assert at.sidebar.select_slider(key="follow_every").value == 10


def test_broken_run_directory_is_reported_and_the_others_shown(tmp_path, monkeypatch):
    import json

    from streamlit.testing.v1 import AppTest

    from router_explorer.sample_data import synthetic_runs

    synthetic_runs(tmp_path / "runs", steps=10)
    broken = tmp_path / "runs" / "collapsing" / "run.json"
    header = json.loads(broken.read_text())
    header["format_version"] = 99
    broken.write_text(json.dumps(header))
    monkeypatch.setenv("SB_EXPLORER_DB", str(tmp_path / "db.duckdb"))
    monkeypatch.setenv("SB_EXPLORER_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    assert not at.exception
    assert list(at.dataframe[0].value["run_id"]) == ["healthy"]
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "collapsing" in errors and "99" in errors
