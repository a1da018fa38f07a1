"""sb-analysis compare --sweep: the t statistics against table values and a hand computation, the paired
test, and the judgement of a synthetic sweep with a missing run and a one-seed variant."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from sb_runlog import read_sweep_manifest, write_sweep_manifest

from sb_analysis import RunDB, ingest
from sb_analysis.cli import main
from sb_analysis.compare_sample import write_synthetic_sweep
from sb_analysis.compare_stats import mean_ci, paired_test, regularized_beta, t_cdf, t_ppf, t_two_sided_p
from sb_analysis.compare_sweep import compare_sweep


@pytest.mark.parametrize(("p", "df", "table"), [
    (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 1, 12.706205), (0.975, 30, 2.042272),
    (0.995, 9, 3.249836), (0.95, 10, 1.812461), (0.9, 3, 1.637744),
])
def test_t_quantiles_match_the_printed_table(p, df, table):
    assert t_ppf(p, df) == pytest.approx(table, abs=2e-6)
    assert t_cdf(table, df) == pytest.approx(p, abs=1e-6)
    assert t_ppf(1 - p, df) == pytest.approx(-table, abs=2e-6)


def test_t_tails_match_closed_forms():
    # df = 1 is the Cauchy distribution: P(|T| > t) = 1 - (2/pi) atan(t)
    for t in (0.3, 1.0, 4.0, 50.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)
    # df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    for t in (0.1, 2.0, 9.0):
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    # many degrees of freedom: the normal distribution
    assert t_cdf(1.959964, 1e7) == pytest.approx(0.975, abs=1e-6)
    # I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b
    assert regularized_beta(3.0, 1.0, 0.4) == pytest.approx(0.4**3, rel=1e-12)
    assert regularized_beta(1.0, 2.5, 0.3) == pytest.approx(1 - 0.7**2.5, rel=1e-12)


def test_mean_ci_against_a_hand_computation():
    # values 3.0, 3.2, 3.4: mean 3.2; deviations -0.2, 0, 0.2 -> s^2 = (0.04 + 0 + 0.04) / 2 = 0.04, s = 0.2;
    # standard error s / sqrt(3) = 0.1154701; t_{0.975, 2} = 4.302653 -> half-width 4.302653 * 0.1154701
    # = 0.4968275; the interval is [2.7031725, 3.6968275]
    ci = mean_ci([3.0, 3.2, 3.4])
    assert (ci.n, ci.mean, ci.std) == (3, pytest.approx(3.2), pytest.approx(0.2))
    assert ci.half_width == pytest.approx(0.4968275, abs=1e-7)
    assert (ci.low, ci.high) == (pytest.approx(2.7031725, abs=1e-7), pytest.approx(3.6968275, abs=1e-7))
    one = mean_ci([3.0])
    assert one.half_width is None and one.low is None  # one value: no interval


def test_paired_test_against_a_hand_computation():
    # differences variant - baseline: -0.1, -0.05, -0.15 -> mean -0.1, s = sqrt((0 + 0.0025 + 0.0025) / 2)
    # = 0.05, se = 0.05 / sqrt(3) = 0.0288675, t = -0.1 / 0.0288675 = -3.4641016 with 2 degrees of freedom;
    # two-sided p (df = 2) = 1 - |t| / sqrt(2 + t^2) = 1 - 3.4641016 / sqrt(14) = 0.0741799;
    # CI: -0.1 ± 4.302653 * 0.0288675 = -0.1 ± 0.1242069
    test = paired_test([3.0, 3.2, 3.4], [2.9, 3.15, 3.25])
    assert test.t == pytest.approx(-3.4641016, abs=1e-6)
    assert test.p_value == pytest.approx(0.0741799, abs=1e-7)
    assert test.diff.mean == pytest.approx(-0.1)
    assert test.diff.half_width == pytest.approx(0.1242069, abs=1e-7)
    # the pairing matters: the same values unpaired would not come near significance
    shuffled = paired_test([3.0, 3.2, 3.4], [3.25, 2.9, 3.15])
    assert shuffled.p_value > 0.5
    assert paired_test([1.0, 2.0], [1.5, 2.5]).p_value == 0.0  # identical differences: certain
    assert paired_test([1.0], [1.5]).p_value is None


@pytest.fixture
def sweep(tmp_path):
    folder = write_synthetic_sweep(tmp_path / "runs", "s", {"bank": 3.30, "dense": 3.45, "same": 3.30})
    return tmp_path, folder


def _judge(tmp_path, folder, **kwargs):
    db = tmp_path / "db.duckdb"
    ingest([tmp_path / "runs"], db)
    with RunDB(db) as handle:
        return compare_sweep(handle.connection, folder, **kwargs)


def test_sweep_judgement_matches_the_runs_final_losses(sweep):
    tmp_path, folder = sweep
    result = _judge(tmp_path, folder)
    losses = {(r["variant"], r["seed"]): r["final_val_loss"] for r in result.runs.iter_rows(named=True)}
    rows = {r["variant"]: r for r in result.table.iter_rows(named=True)}
    bank = [losses["bank", s] for s in (0, 1, 2)]
    assert rows["bank"]["val_loss_mean"] == pytest.approx(sum(bank) / 3)
    assert rows["bank"]["val_loss_ci"] == pytest.approx(mean_ci(bank).half_width)
    assert rows["bank"]["diff_mean"] is None and rows["bank"]["complete"]
    dense = paired_test(bank, [losses["dense", s] for s in (0, 1, 2)])
    assert rows["dense"]["diff_mean"] == pytest.approx(dense.diff.mean)
    assert 0.1 < rows["dense"]["diff_mean"] < 0.2
    assert rows["dense"]["p_value"] == pytest.approx(dense.p_value) and rows["dense"]["significant"]
    assert not rows["same"]["significant"]  # the same final loss up to noise
    assert rows["dense"]["tokens_per_s"] < rows["bank"]["tokens_per_s"]  # its steps were made twice as slow
    assert result.notes == []
    other = _judge(tmp_path, folder, baseline="dense", alpha=0.2)
    assert other.table.row(0, named=True)["diff_mean"] == pytest.approx(-dense.diff.mean)


def test_missing_and_unfinished_runs_are_named_and_the_rest_reported(sweep, capsys):
    tmp_path, folder = sweep
    shutil.rmtree(tmp_path / "runs" / "s-dense-s2")
    status = tmp_path / "runs" / "s-bank-s1" / "status.json"
    status.write_text(status.read_text().replace('"finished"', '"running"'))
    code = main(["--db", str(tmp_path / "c.duckdb"), "compare", "--sweep", str(folder), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0
    judged = json.loads(captured.out)
    rows = {r["variant"]: r for r in judged["variants"]}
    assert (rows["dense"]["n"], rows["dense"]["complete"]) == (2, False)
    assert (rows["bank"]["n"], rows["bank"]["pairs"]) == (2, None)
    # dense has seeds 0, 1 and bank seeds 0, 2: one pair, no test
    assert rows["dense"]["pairs"] == 1 and rows["dense"]["p_value"] is None
    notes = " ".join(judged["notes"])
    assert "run s-dense-s2 (dense, seed 2) is missing: its folder is gone" in notes
    assert "run s-bank-s1 (bank, seed 1) is running (not finished)" in notes
    assert "note: run s-dense-s2" in captured.err  # machine formats keep stdout clean


def test_one_seed_variant_says_it_has_no_interval(tmp_path, capsys):
    write_synthetic_sweep(tmp_path / "runs", "one", {"bank": 3.3, "dense": 3.4}, seeds=(0,))
    code = main(["--db", str(tmp_path / "c.duckdb"), "compare", "--sweep", "one", "--runs",
                 str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0
    assert "variant 'bank' has one finished run: no confidence interval (it needs at least 2 seeds)" in out
    assert "| bank    | 1/1  |" in out


def test_bad_sweep_arguments_are_one_line(sweep, capsys):
    tmp_path, folder = sweep
    db = ["--db", str(tmp_path / "c.duckdb"), "compare"]
    assert main([*db, "--sweep", "nope", "--runs", str(tmp_path / "runs")]) == 1
    assert "no sweep 'nope'" in capsys.readouterr().err
    assert main([*db, "--sweep", str(folder), "--baseline", "moe"]) == 2
    assert "--baseline 'moe' is not a variant" in capsys.readouterr().err
    assert main([*db]) == 2
    assert "needs run ids" in capsys.readouterr().err
    manifest = read_sweep_manifest(folder)
    manifest["format_version"] = 9
    write_sweep_manifest(folder, manifest)  # the writer sets the version it knows
    assert read_sweep_manifest(folder)["format_version"] == 1
