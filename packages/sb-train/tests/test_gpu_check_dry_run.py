"""scripts/gpu_check: its CPU dry run writes a well-formed report naming every part; a part over its budget
is killed and reported failed while the others still run; the FLOP count behind the MFU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "scripts"
PARTS = ["pytest_gpu", "train", "bank", "muon", "loader"]


def run_check(args: list[str], launcher: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = [str(SCRIPTS / "gpu_check"), *args] if launcher else [sys.executable, str(SCRIPTS / "gpu_check.py"),
                                                                 *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_writes_a_report_of_every_part(tmp_path: Path) -> None:
    """The whole dry run (~50 s on 2 idle cores, every part at toy size on CPU)."""
    out = tmp_path / "report"
    proc = run_check(["--dry-run", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] is True and report["ok"] is True
    assert list(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part)
        assert 0 < part["seconds"] <= part["budget_s"]
    env = report["environment"]
    assert env["torch"] and "triton" in env and "driver" in env and "gpu" not in env
    train = report["parts"]["train"]["figures"]
    assert train["ms_per_step_median"] > 0 and train["tokens_per_s"] > 0
    assert train["flops_per_step"]["total_flops"] > train["flops_per_step"]["attention_flops"] > 0
    assert train["mfu"] is None  # no peak figure for a CPU
    assert "synthetic" in train["data"]
    assert report["parts"]["bank"]["figures"]["rows"][0]["bank ms"]
    assert report["parts"]["muon"]["figures"]["sb_muon_torch_ms"] > 0
    assert report["parts"]["loader"]["figures"]["loader_tokens_per_s"] > 0
    md = (out / "report.md").read_text()
    assert "all parts ok" in md
    for name in PARTS:
        assert f"| {name} | ok |" in md


def test_a_part_over_its_budget_fails_the_check_and_the_next_part_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = run_check(["--dry-run", "--out", str(out), "--only", "train", "loader", "--budget", "train=0.01"],
                     launcher=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    train, loader = report["parts"]["train"], report["parts"]["loader"]
    assert train["status"] == "failed" and "over its budget of 0.01 s" in train["error"], train
    assert train["seconds"] < 10, train  # killed, not waited for
    assert loader["status"] == "ok", (loader, (out / "loader.log").read_text())
    assert report["ok"] is False
    assert "FAILED" in (out / "report.md").read_text()


def test_a_bad_budget_is_one_line(tmp_path: Path) -> None:
    proc = run_check(["--dry-run", "--out", str(tmp_path), "--budget", "nosuchpart=3"], timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: --budget 'nosuchpart=3': expected PART=SECONDS with PART one of "
        "pytest_gpu, train, bank, muon, loader"
    ]


@pytest.fixture(scope="module")
def train_part():
    spec = importlib.util.spec_from_file_location("gpu_check_train", SCRIPTS / "gpu_check_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_context_counts_causal_keys(train_part) -> None:
    assert train_part.attention_context(4, 2) == pytest.approx((1 + 2 + 2 + 2) / 4)
    assert train_part.attention_context(6, 100) == pytest.approx(7 / 2)  # full causal: (T + 1) / 2


def test_step_flops_is_six_active_params_per_token_plus_attention(train_part) -> None:
    from sb_model import GPT
    from sb_model.parameter_counts import parameter_counts
    from sb_train.config_loading import load_config

    cfg = load_config("smoke").model
    model = GPT(cfg)
    c = parameter_counts(model)
    T = 64
    f = train_part.step_flops(model, T, window_tokens=10**6)
    b = cfg.bank
    active = (c["attention"] + c["experts"] * b.topk / b.num_experts + c["routers"] + c["dense_ffn"]
              + cfg.padded_vocab_size * cfg.model_dim)
    assert f["matmul_flops"] == pytest.approx(6 * active * T)
    n_attn = sum(blk.attn is not None for blk in model.blocks)
    assert f["attention_flops"] == pytest.approx(n_attn * 12 * cfg.num_heads * cfg.head_dim * (T + 1) / 2 * T)
    assert f["total_flops"] == pytest.approx(f["matmul_flops"] + f["attention_flops"])
