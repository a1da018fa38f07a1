"""Run directories and databases for the tests, the benchmark and demos.

`write_sample_runs` writes runs in the documented format (docs/log-format.md) with sb-analysis's synthetic
runs (sb_analysis.synthetic) and sb-runlog's writer: a healthy run with domain labels, a run whose layer
collapses onto one expert, and a run with scalars only (no router.csv). More sources (e.g. sb-train's smoke
preset) plug in through `extra`: callables that write run directories under the given root and return their
paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from sb_runlog import RunLogWriter, new_run_header

from sb_analysis import ingest
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run

RunSource = Callable[[Path], Iterable[Path]]


def synthetic_runs(root: Path, steps: int = 120, num_layers: int = 4, num_experts: int = 8) -> list[Path]:
    """A healthy run (with domains.csv) and a collapsing one (layer 1 onto expert 3 from 40% of the run)."""
    return [
        write_synthetic_run(root, SyntheticRun("healthy", steps=steps, num_layers=num_layers,
                                               num_experts=num_experts, domains=True, val_every=20,
                                               preset="synthetic")),
        write_synthetic_run(root, SyntheticRun("collapsing", steps=steps, num_layers=num_layers,
                                               num_experts=num_experts, collapse={1: (int(steps * 0.4), 3)},
                                               val_every=20, seed=1, final_loss=3.6, preset="ablation")),
    ]


def scalars_only_run(root: Path, steps: int = 30) -> list[Path]:
    """A run that logged losses but no router metrics and no domains (a dense baseline, say)."""
    header = new_run_header("dense-baseline", "dense", {"preset": "dense", "num_layers": 2}, num_layers=2,
                            num_experts=1, top_k=1, tokens_per_step=4096, total_steps=steps)
    writer = RunLogWriter(root / "dense-baseline", header,
                          scalar_columns=["step", "time_ms", "tokens", "loss", "val_loss"])
    for step in range(steps + 1):
        writer.log_step({
            "step": step, "time_ms": 50.0 * (step + 1), "tokens": (step + 1) * 4096,
            "loss": None if step == steps else 8.0 - 0.1 * step,
            "val_loss": 8.1 - 0.1 * step if step % 10 == 0 else None,
        })
    writer.write_status("finished", steps, 50.0 * (steps + 1), final_val_loss=8.1 - 0.1 * steps)
    writer.close()
    return [root / "dense-baseline"]


DEFAULT_SOURCES: tuple[RunSource, ...] = (synthetic_runs, scalars_only_run)


def write_sample_runs(root: str | Path, extra: Iterable[RunSource] = ()) -> list[Path]:
    """Write the sample runs (and those of `extra` sources) under `root`; returns the run directories."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for source in (*DEFAULT_SOURCES, *extra):
        out.extend(Path(p) for p in source(root))
    return out


def sample_database(root: str | Path, extra: Iterable[RunSource] = ()) -> Path:
    """Sample runs under `root/runs`, ingested into `root/runs.duckdb`; returns the database path."""
    root = Path(root)
    write_sample_runs(root / "runs", extra)
    db = root / "runs.duckdb"
    report = ingest([root / "runs"], db)
    if report.exit_code != 0:
        raise RuntimeError(f"sample ingest failed: {report.failures or report.row_errors}")
    return db


def big_run(root: str | Path, steps: int = 2000, num_layers: int = 28, num_experts: int = 8) -> Path:
    """The benchmark's run: `steps` steps x `num_layers` layers with a collapse and domain labels."""
    spec = SyntheticRun("big", steps=steps, num_layers=num_layers, num_experts=num_experts, domains=True,
                        val_every=100, collapse={7: (steps // 2, 3)}, preset="big")
    return write_synthetic_run(Path(root), spec)
