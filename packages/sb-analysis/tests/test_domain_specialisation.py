"""The domain-specialisation view and health line against hand-computed tables (docs/log-format.md §5)."""

from __future__ import annotations

import csv
import math

import pytest

from sb_analysis import RunDB, ingest
from sb_analysis.domain_health import reading
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run

# layer -> counts[domain][expert] for domains (code, prose), 2 experts
TABLES = {
    0: [[10, 0], [0, 30]],  # perfect: NMI 1
    1: [[10, 30], [20, 60]],  # independent: 0
    2: [[40, 10], [10, 40]],  # hand example: (0.8 ln 1.6 + 0.2 ln 0.4) / ln 2
    3: [[5, 7], [0, 0]],  # one domain measured: no score
}
HAND = (0.8 * math.log(1.6) + 0.2 * math.log(0.4)) / math.log(2)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    run_dir = write_synthetic_run(root, SyntheticRun(run_id="spec", steps=20, num_layers=4, num_experts=2))
    with open(run_dir / "domains.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["step", "layer", "domain", "expert", "tokens"])
        for step in (10, 20):
            for layer, table in TABLES.items():
                for d, domain in enumerate(("code", "prose")):
                    for expert, tokens in enumerate(table[d]):
                        out.writerow([step, layer, domain, expert, tokens])
    path = root / "runs.duckdb"
    assert ingest([root], path).exit_code == 0
    return path


def test_view_matches_hand_computed_nmi(db):
    with RunDB(db) as rdb:
        spec = rdb.sql(
            "SELECT layer, specialization FROM domain_specialization WHERE step = 20 ORDER BY layer"
        )
    got = dict(spec.rows())
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(0.0, abs=1e-12)
    assert got[2] == pytest.approx(HAND)
    assert round(HAND, 4) == 0.2781
    assert got[3] is None


def test_health_reports_specialisation_per_layer_at_the_last_step(db):
    with RunDB(db) as rdb:
        found = rdb.health("spec")
    line = found.filter(found["rule"] == "domain_specialisation")
    assert line.height == 1 and line["severity"][0] == "info" and line["step_from"][0] == 20
    message = line["message"][0]
    assert "at step 20" in message and "L0 1.00, L1 0.00, L2 0.28;" in message and "L3" not in message
    assert "strong (highest 1.00 in layer 0)" in message


def test_readings():
    assert [reading(v) for v in (0.0, 0.1, 0.3, 0.9)] == ["none to speak of", "weak", "moderate", "strong"]
