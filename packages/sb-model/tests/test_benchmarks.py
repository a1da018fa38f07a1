"""The benchmark scripts run end to end (tiny shapes, eager only) and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_bench_bank_prints_a_row_per_topk_with_the_preset_overridden():
    out = _run(
        "bench_bank.py",
        *("--preset", "small", "--tokens", "64", "--dim", "16", "--hidden", "32", "--experts", "4"),
        *("--modes", "eager", "--rounds", "1", "--reps", "1", "--warmup", "0", "--threads", "1"),
    )
    assert "preset small: T=64 d=16 h=32 E=4; 1 rounds x 1 reps" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 1 | eager", "| 2 | eager"))]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0  # dense ms, bank ms
        assert float(cells[9]) > 0  # the naive loop ran too


def test_bench_bank_refuses_an_unknown_preset():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_bank.py"), "--preset", "huge"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "invalid choice: 'huge'" in proc.stderr


def test_bench_gpt_prints_both_models():
    out = _run("bench_gpt.py", "--seq-len", "64", "--batch", "1", "--iters", "1", "--threads", "1")
    assert out.count("| SwitchBank |") == 2 and out.count("| dense (equal active) |") == 2
