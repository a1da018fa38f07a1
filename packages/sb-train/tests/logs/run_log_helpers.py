"""Shared helpers of the logging tests: a RoutingReport from random routing calls, a RunLogger, a step row."""

from __future__ import annotations

import torch

from sb_analysis import RunDB, ingest
from sb_model.bank.metrics import RouterMetrics, call_statistics
from sb_train.logs import RunLogger

E = 4
LAYERS = 2
GROUPS = ["embed", "muon"]
FEATURES = ["tok", "flags"]


def fake_report(seed: int, capacity: int | None = None, tokens: int = 32, k: int = 1):
    """A RoutingReport from RouterMetrics fed with random routing calls (two per layer)."""
    g = torch.Generator().manual_seed(seed)
    metrics = RouterMetrics(LAYERS, E)
    for layer in range(LAYERS):
        for _ in range(2):
            logits = torch.randn(tokens, E, generator=g) * 2
            probs = logits.softmax(-1)
            topk = probs.topk(k, -1).indices
            demanded = torch.bincount(topk.flatten(), minlength=E).float()
            served = demanded.clamp(max=capacity) if capacity is not None else demanded
            scalars, vectors = call_statistics(
                probs=probs,
                logits=logits,
                topk_idx=topk,
                valid=torch.ones(tokens, k, dtype=torch.bool),
                live=torch.ones(E, dtype=torch.bool),
                n_live=torch.tensor(E),
                demanded_counts=demanded,
                served_counts=served,
                aux=torch.tensor(0.01 * (layer + 1)),
                z_loss=torch.tensor(0.0),
            )
            metrics.record(layer, scalars, vectors)
    router_w = torch.randn(LAYERS, E, 6, generator=g)
    return metrics.read(router_w, {"tok": (0, 4), "flags": (4, 6)})


def make_logger(run_dir, **overrides):
    kwargs = dict(
        run_id="test-run",
        preset="smoke",
        config={"model": {"num_layers": LAYERS, "num_experts": E}, "seed": 0},
        num_layers=LAYERS,
        num_experts=E,
        top_k=1,
        tokens_per_step=256,
        total_steps=4,
        lr_groups=GROUPS,
        feature_names=FEATURES,
        extra_header={"git_sha": "abc123", "git_dirty": True},
    )
    kwargs.update(overrides)
    return RunLogger(run_dir, **kwargs)


def step_scalars(step: int, loss: float, **extra):
    return {
        "time_ms": 100.0 * (step + 1),
        "tokens": 256 * (step + 1),
        "loss": loss,
        "loss_main": loss - 0.01,
        "loss_aux": 0.01,
        "lr_embed": 0.1 / (step + 1),
        "lr_muon": 0.02,
        "router_temp": 1.5,
        "logit_cap": None,
        "window_blocks": 3,
        "router_clipped": False,
        **extra,
    }


def ingest_run(run_dir, tmp_path):
    db = tmp_path / "runs.duckdb"
    report = ingest([run_dir], db)
    assert report.exit_code == 0, (report.failures, [r.errors for r in report.runs])
    return RunDB(db)
