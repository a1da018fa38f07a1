"""Shared fixtures: synthetic run directories and a real W&B offline run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sb_analysis import ingest
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run

WANDB_SCRIPT = textwrap.dedent(
    """
    import math, sys, wandb
    run = wandb.init(project="sb-test", mode="offline", id="wbtest01", dir=sys.argv[1],
                     config={"preset": "smoke", "num_layers": 2, "num_experts": 4,
                             "optim": {"lr": 0.02, "betas": [0.9, 0.95]}})
    for step in range(30):
        row = {"train/loss": 10.0 - 0.2 * step, "perf/approx_step_time_ms": 100.0 * (step + 1),
               "train/tokens_seen": (step + 1) * 1024, "lr/adamw": 0.01, "router/temperature": 1.5,
               "router/logit_cap": float("nan")}
        if step % 10 == 0 or step == 29:
            row["val/loss"] = 10.1 - 0.2 * step
        for layer in range(2):
            if layer == 1 and step >= 15:
                load = [0.0, 0.02, 0.98, 0.0]
            else:
                load = [0.25, 0.24, 0.26, 0.25]
            for e, v in enumerate(load):
                row[f"router_layer/{layer}/load_e{e}"] = v
            row[f"router_layer/{layer}/topk_prob_mean"] = 0.95 if load[2] > 0.9 else 0.3
            row[f"router_layer/{layer}/imp_cv2"] = 0.01
        run.log(row, step=step)
    run.finish()
    """
)


@pytest.fixture(scope="session")
def wandb_offline_run(tmp_path_factory) -> Path:
    """A real offline run written by the wandb package (WANDB_MODE=offline); returns its run directory."""
    root = tmp_path_factory.mktemp("wandb")
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
    }
    subprocess.run(
        [sys.executable, "-c", WANDB_SCRIPT, str(root)], check=True, env=env, timeout=300, capture_output=True
    )
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert runs, "wandb wrote no offline-run directory"
    return runs[-1]


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> Path:
    """A healthy and a collapsing run (layer 2 onto expert 3 from step 120) with domain labels."""
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root, SyntheticRun("healthy", steps=300, domains=True))
    write_synthetic_run(root, SyntheticRun("collapsed", steps=300, collapse={2: (120, 3)}, seed=1))
    write_synthetic_run(
        root, SyntheticRun("peaky", steps=200, peaky=True, clipped_frac=0.6, seed=2, final_loss=3.6)
    )
    return root


@pytest.fixture(scope="session")
def shared_db(run_root, tmp_path_factory) -> Path:
    """A database with the three synthetic runs (read-only use only)."""
    db = tmp_path_factory.mktemp("db") / "runs.duckdb"
    report = ingest([run_root], db)
    assert report.exit_code == 0, report.failures
    return db
