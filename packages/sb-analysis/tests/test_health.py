from __future__ import annotations

import math

import duckdb
import polars as pl

from sb_analysis import RunDB, ingest
from sb_analysis.health import collapse_episodes
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run


def reference_score(imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac, A, E):
    """The reference's router/health_score (docs/log-format.md §7), written out term by term."""
    terms = [0.8 * imp_cv2 / A, 0.9 * load_cv2 / A]
    if A > 1:
        terms += [
            0.5 * max(0.0, abs(math.log(A) - load_entropy) / math.log(A)),
            0.2 * max(0.0, abs(math.log(A) - imp_entropy) / math.log(A)),
        ]
    terms.append(1.25 * abs(usage_frac - min(1.0, A / E)))
    return 1.0 / (1.0 + sum(t for t in terms if not math.isnan(t)))


def test_healthy_run_has_no_findings(shared_db):
    with RunDB(shared_db) as db:
        found = db.health("healthy")
    # no rule broken; the run logged domains.csv, so the specialisation line comes too
    assert found["rule"].to_list() == ["domain_specialisation", "healthy"]
    assert found["severity"].to_list() == ["info", "ok"]
    assert "router healthy" in found["message"][1]


def test_collapse_found_with_layer_expert_and_onset(shared_db):
    with RunDB(shared_db) as db:
        found = db.health("collapsed")
        summary = db.runs().filter(pl.col("run_id") == "collapsed").row(0, named=True)
    collapse = found.filter(pl.col("rule") == "collapse")
    assert collapse.height == 1
    row = collapse.row(0, named=True)
    assert row["layer"] == 2 and row["step_from"] == 120 and row["severity"] == "bad"
    assert row["message"].startswith("layer 2 collapsed onto expert 3 from step 120")
    assert found["severity"][0] == "bad"  # worst first
    assert not found.filter((pl.col("layer") != 2) & (pl.col("rule") == "collapse")).height
    assert summary["collapsed_layers_final"] == 1 and summary["health_score_final"] < 0.9


def test_peaky_router_and_clipping_rules(shared_db):
    with RunDB(shared_db) as db:
        found = db.health("peaky")
    rules = set(found["rule"])
    assert {"peaky", "low_entropy", "clipping"} <= rules
    assert "collapse" not in rules
    clipping = found.filter(pl.col("rule") == "clipping").row(0, named=True)
    assert 0.4 < clipping["value"] < 0.8 and "clipped in" in clipping["message"]


def test_windows_parameter_and_views(shared_db):
    with RunDB(shared_db) as db:
        default = db.health_windows("collapsed")
        small = db.health_windows("collapsed", window=25)
        layers = db.health_windows("collapsed", window=50, per_layer=True)
    assert default.height == 10 and small.height == 12
    l2 = layers.filter(pl.col("layer") == 2).sort("window_idx")
    assert l2.filter(pl.col("step_from") >= 150)["collapsed_frac"].min() == 1.0
    assert l2.filter(pl.col("step_to") < 120)["collapsed_frac"].max() == 0.0
    assert l2.filter(pl.col("step_from") >= 150)["top_expert"].unique().to_list() == [3]


def test_composite_score_matches_reference_formula(shared_db):
    with RunDB(shared_db) as db:
        rows = db.sql(
            "SELECT imp_cv2, load_cv2, imp_entropy, load_entropy, usage_frac, active, n_experts, "
            "health_score FROM router_layer_metrics WHERE run_id = 'collapsed' AND step IN (10, 200)"
        )
    for r in rows.iter_rows(named=True):
        A = max(r["active"], 1)
        want = reference_score(
            r["imp_cv2"],
            r["load_cv2"],
            r["imp_entropy"],
            r["load_entropy"],
            r["usage_frac"],
            A,
            r["n_experts"],
        )
        assert math.isclose(r["health_score"], want, rel_tol=1e-9)


def test_derived_metrics_fill_in_missing_scalars(tmp_path):
    """A writer that logs only the load/importance vectors still gets cv2, entropy, usage."""
    run = write_synthetic_run(tmp_path / "runs", SyntheticRun("vec", steps=10))
    router = run / "router.csv"
    lines = router.read_text().splitlines()
    header = lines[0].split(",")
    drop = {header.index(c) for c in ("imp_cv2", "load_cv2", "usage_frac", "imp_entropy", "load_entropy")}
    router.write_text(
        "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i not in drop) for line in lines)
        + "\n"
    )
    db = tmp_path / "r.duckdb"
    ingest([run], db)
    con = duckdb.connect(str(db), read_only=True)
    got = con.execute(
        "SELECT load, load_cv2, load_entropy, usage_frac FROM router_layer_metrics LIMIT 1"
    ).fetchone()
    con.close()
    load = got[0]
    mean = sum(load) / len(load)
    cv2 = sum((x - mean) ** 2 for x in load) / len(load) / mean**2
    assert math.isclose(got[1], cv2, rel_tol=1e-9)
    assert math.isclose(got[2], -sum(x * math.log(x) for x in load if x > 0), rel_tol=1e-9)
    assert got[3] == 1.0


def test_collapse_episode_bridging_and_recovery():
    frame = pl.DataFrame(
        {
            "step": list(range(20)),
            "collapsed_rule": [False] * 5 + [True] * 4 + [False] + [True] * 3 + [False] * 7,
            "top_expert": [0] * 5 + [5] * 8 + [0] * 7,
            "max_frac": [0.2] * 5 + [0.95] * 8 + [0.2] * 7,
            "active": [8] * 5 + [1] * 8 + [8] * 7,
        }
    )
    (episode,) = collapse_episodes(frame, min_points=3)
    assert episode[:2] == (5, 12) and episode[3] == 5
    assert collapse_episodes(frame.with_columns(pl.lit(False).alias("collapsed_rule"))) == []


def test_domain_specialisation(shared_db):
    with RunDB(shared_db) as db:
        load = db.domain_load("healthy")
        spec = db.sql("SELECT * FROM domain_specialization WHERE run_id = 'healthy'")
    assert set(load["domain"]) == {"code", "math", "prose"}
    per_domain = load.group_by(["layer", "domain"]).agg(pl.col("frac_of_domain").sum())
    assert (per_domain["frac_of_domain"] - 1.0).abs().max() < 1e-9
    code = load.filter((pl.col("layer") == 0) & (pl.col("domain") == "code")).sort("frac_of_domain")
    assert code["expert"][-1] % 3 == 0  # code prefers experts 0, 3, 6 in the synthetic data
    assert spec["specialization"].min() > 0.2 and spec["specialization"].max() <= 1.0
