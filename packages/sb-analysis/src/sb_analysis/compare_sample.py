"""A synthetic sweep for tests and demos: run folders of sb_analysis.synthetic plus a sweep manifest.

Test and demo scaffolding like :mod:`sb_analysis.synthetic`: ``write_synthetic_sweep(root, "s", {"bank":
3.30, "dense": 3.40})`` writes ``root/s-<variant>-s<seed>/`` for every variant and seed and
``root/sweeps/s/sweep.json`` (docs/log-format.md §11) that lists them, all finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sb_runlog import sweep_dir, write_sweep_manifest

from .synthetic import SyntheticRun, write_synthetic_run


def write_synthetic_sweep(root: str | Path, sweep_id: str, final_losses: Mapping[str, float],
                          seeds: Sequence[int] = (0, 1, 2), steps: int = 60,
                          preset: str = "synthetic") -> Path:
    """The sweep folder; variant v's runs end near ``final_losses[v]`` (seed-dependent noise of ~0.01)."""
    root = Path(root)
    runs = []
    for seed in seeds:
        for offset, (variant, loss) in enumerate(final_losses.items()):
            run_id = f"{sweep_id}-{variant}-s{seed}"
            write_synthetic_run(root, SyntheticRun(run_id, steps=steps, num_layers=2, num_experts=4,
                                                   val_every=steps // 3, seed=seed * 100 + offset,
                                                   final_loss=loss, ms_per_step=100.0 * (1 + offset),
                                                   preset=preset))
            runs.append({"variant": variant, "seed": seed, "run_id": run_id, "state": "finished",
                         "exit_code": 0, "wall_s": steps * 0.1 * (1 + offset) + 2.0, "final_val_loss": None})
    folder = sweep_dir(root, sweep_id)
    write_sweep_manifest(folder, {
        "sweep_id": sweep_id, "preset": preset, "seeds": list(seeds),
        "variants": [{"name": v, "overrides": [f"model.ffn={v}"]} for v in final_losses], "runs": runs,
        "plan": {"preset": preset, "seeds": list(seeds)},
    })
    return folder
