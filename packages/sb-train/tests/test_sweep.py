"""sb-train sweep: bad input refused before any run, and a sweep of 2 variants x 2 seeds on the smoke preset
that is killed during its second run and continued by the same command (finished runs skipped, the
interrupted one resumed from its checkpoint)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sb_runlog import read_sweep_manifest, write_sweep_manifest
from train_helpers import prepare_data

from sb_analysis.compare_output import run_compare_sweep
from sb_train.cli import main
from sb_train.sweep import _plan_and_id, build_parser
from sb_train.sweep_plan import parse_seeds, parse_variant, parse_vary, resolve_variants, split_top_level
from sb_train.sweep_runner import open_manifest


def _sweep_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    train, val = prepare_data(data_dir)
    return ["sweep", "--preset", "smoke", "--out-dir", str(out), "--name", "t",
            "--set", f'data.train_files="{train}"', "--set", f'data.val_files="{val}"',
            "--set", "run.threads=1", "--set", "schedule.num_iterations=6", "--set", "run.print_every=100",
            "--vary", "model.ffn=bank,dense", "--seeds", "2", *extra]


def test_splitting_keeps_arrays_and_quotes_whole():
    assert split_top_level('a=[[0, 1], [2, 2]],b="x,y",c=1') == ['a=[[0, 1], [2, 2]]', 'b="x,y"', "c=1"]
    assert [v.name for v in parse_vary("model.bank.topk=1,2")] == ["1", "2"]
    v = parse_variant("moe_total:model.ffn=layer_moe,model.layer_moe_match=total")
    assert v.name == "moe_total" and v.overrides == ("model.ffn=layer_moe", "model.layer_moe_match=total")
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("0,5,7") == (0, 5, 7)
    assert parse_seeds("1", allow_one=True) == (0,)


@pytest.mark.parametrize(("extra", "message"), [
    (["--vary", "model.fnn=bank,dense"], "variant 'bank': --set model.fnn: unknown key model.fnn"),
    (["--vary", "model.bank.topk=1", "--variant", "k1:model.bank.topk=1"],
     "resolve to the same configuration"),
    (["--variant", "a:model.bank.topk=1", "--variant", "a:model.bank.topk=2"], "two variants are named 'a'"),
    (["--seeds", "1"], "one seed gives no confidence interval"),
    (["--set", "run.seed=3"], "run.seed is set by the sweep"),
    (["--variant", "bad name:model.bank.topk=2"], "variant name 'bad name'"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, extra, message):
    code = main(["sweep", "--preset", "smoke", "--out-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweeps").exists()


def test_other_arguments_under_the_same_name_are_refused(tmp_path, capsys):
    base = ["--preset", "smoke", "--out-dir", str(tmp_path), "--name", "s", "--vary", "model.ffn=bank,dense"]
    plan, sweep_id = _plan_and_id(build_parser().parse_args([*base, "--seeds", "2"]))
    resolve_variants(plan)
    folder, manifest = open_manifest(plan, sweep_id)
    write_sweep_manifest(folder, manifest)  # the sweep exists (as after its first run started)
    assert main(["sweep", *base, "--seeds", "2", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["sweep", *base, "--seeds", "3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "was started with other arguments" in err and "seeds [0, 1] vs [0, 1, 2]" in err
    assert main(["sweep", "--resume", str(folder), "--preset", "tiny", "--dry-run"]) == 2
    assert "preset 'smoke' vs 'tiny'" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(folder), "--dry-run"]) == 0  # as it was started


KILLER = textwrap.dedent("""
    import os, sys
    from sb_train.callbacks import TrainerCallback
    from sb_train.cli import main

    class KillSecondRun(TrainerCallback):
        def on_step_end(self, trainer, step):
            if trainer.run_id.endswith("-dense-s0") and step == 5:
                os._exit(137)  # like an OOM kill: no checkpoint, no status, no manifest update

    main(sys.argv[1:], callbacks=[KillSecondRun()])
""")


def test_sweep_killed_in_its_second_run_continues_where_it_stopped(tmp_path, smoke_data):
    out = tmp_path / "runs"
    args = _sweep_args(smoke_data, out)
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    folder = out / "sweeps" / "t"
    manifest = read_sweep_manifest(folder)
    states = {r["run_id"]: r["state"] for r in manifest["runs"]}
    assert states == {"t-bank-s0": "finished", "t-dense-s0": "running", "t-bank-s1": "pending",
                      "t-dense-s1": "pending"}
    first_log = (out / "t-bank-s0" / "scalars.csv").read_text()

    assert main(args) == 0  # the same command again
    manifest = read_sweep_manifest(folder)
    assert [r["state"] for r in manifest["runs"]] == ["finished"] * 4
    assert [(r["variant"], r["seed"]) for r in manifest["runs"]] == [("bank", 0), ("dense", 0), ("bank", 1),
                                                                     ("dense", 1)]
    assert (out / "t-bank-s0" / "scalars.csv").read_text() == first_log  # skipped, not run again
    resumed = json.loads((out / "t-dense-s0" / "run.json").read_text())
    assert resumed["resumed_from"]["step"] == 3  # the checkpoint saved before step 4 (checkpoint_every=4)
    assert len(resumed["segments"]) == 2
    for r in manifest["runs"]:
        header = json.loads((out / r["run_id"] / "run.json").read_text())
        assert header["sweep"] == {"id": "t", "variant": r["variant"], "seed": r["seed"]}
        assert header["config"]["run"]["seed"] == r["seed"]
        assert header["config"]["model"]["ffn"] == r["variant"]
        assert isinstance(r["final_val_loss"], float) and r["wall_s"] > 0
    # seeds differ in initialisation: the same variant ends at other losses
    losses = {r["run_id"]: r["final_val_loss"] for r in manifest["runs"]}
    assert losses["t-bank-s0"] != losses["t-bank-s1"]
    assert main(args) == 0  # nothing left: every run skipped

    # judged by sb-analysis from the real run folders
    buffer = io.StringIO()
    assert run_compare_sweep(str(folder), tmp_path / "a.duckdb", alpha=0.01, confidence=0.95, fmt="json",
                             out=buffer) == 0
    judged = json.loads(buffer.getvalue())
    assert [v["variant"] for v in judged["variants"]] == ["bank", "dense"]
    assert [v["n"] for v in judged["variants"]] == [2, 2] and judged["notes"] == []
    dense = judged["variants"][1]
    expected = sum(losses[f"t-dense-s{s}"] - losses[f"t-bank-s{s}"] for s in (0, 1)) / 2
    assert dense["diff_mean"] == pytest.approx(expected, rel=1e-6)
