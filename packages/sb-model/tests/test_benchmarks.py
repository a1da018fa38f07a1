"""The benchmark scripts run end to end (tiny shapes, eager only) and print their tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_script(monkeypatch, capsys):
    """Run a benchmark's ``main()`` in this process with the given arguments; returns what it printed. The
    scripts set the thread count: it is restored afterwards."""
    threads = torch.get_num_threads()

    def run(script: str, *args: str) -> str:
        spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCH / script)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [script, *args])
        module.main()
        return capsys.readouterr().out

    yield run
    torch.set_num_threads(threads)


def test_bench_bank_prints_a_row_per_topk_with_the_preset_overridden(run_script):
    out = run_script(
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


def test_bench_bank_refuses_an_unknown_preset(run_script, capsys):
    with pytest.raises(SystemExit):
        run_script("bench_bank.py", "--preset", "huge")
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_bench_gpt_prints_both_models(run_script):
    out = run_script("bench_gpt.py", "--seq-len", "64", "--batch", "1", "--iters", "1", "--threads", "1")
    assert out.count("| SwitchBank |") == 2 and out.count("| dense (equal active) |") == 2
