"""Realistic synthetic run directories (healthy or collapsing routers) for tests, demos and benchmarks.

Test and demo scaffolding, not part of the package's public face: import it as ``sb_analysis.synthetic``.
The numbers follow the shapes of real SwitchBank logs: a loss that falls from ~10.9 towards ~3, per-layer
load vectors near 1/E for a healthy router, and, for a collapsing layer, one expert taking >= 95% of the
assignments from a given step on while the others go idle. The files carry every column the format
declares (sb_runlog.columns), written with sb-runlog's writer; a column left empty is "not measured".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from sb_runlog import DOMAINS as DOMAIN_TABLE
from sb_runlog import RunLogWriter, expert_column, expert_columns, new_run_header
from sb_runlog.columns import LR_PREFIX, ROUTER_COLUMNS, ROUTER_SUMMARY_COLUMNS, SCALARS_COLUMNS

DOMAINS = ("code", "math", "prose")
LR_GROUPS = ("embed", "attn", "router")


@dataclass
class SyntheticRun:
    """What to generate. `collapse` maps layer -> (from_step, expert) for layers that collapse."""

    run_id: str
    steps: int = 200
    num_layers: int = 4
    num_experts: int = 8
    val_every: int = 50
    router_every: int = 1
    collapse: dict[int, tuple[int, int]] = field(default_factory=dict)
    domains: bool = False
    peaky: bool = False
    clipped_frac: float = 0.02
    seed: int = 0
    final_loss: float = 3.3
    ms_per_step: float = 470.0
    tokens_per_step: int = 98304
    preset: str = "synthetic"
    extra_metrics: int = 0
    finished: bool = True


def _normalize(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values]


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def _cv2(v: list[float]) -> float:
    mean = sum(v) / len(v)
    if mean == 0:
        return float("nan")
    return sum((x - mean) ** 2 for x in v) / len(v) / mean**2


def _layer_row(spec: SyntheticRun, rng: random.Random, step: int, layer: int) -> dict[str, float | int]:
    E = spec.num_experts
    collapse = spec.collapse.get(layer)
    if collapse is not None and step >= collapse[0]:
        expert = collapse[1]
        load = [0.0] * E
        load[expert] = 0.96 + 0.03 * rng.random()
        other = (expert + 1) % E
        load[other] = 1.0 - load[expert]
        importance = _normalize([0.02 + 0.01 * rng.random() for _ in range(E)])
        importance[expert] += 0.8
        importance = _normalize(importance)
        top_p = 0.9 + 0.05 * rng.random()
        entropy = 0.25 + 0.05 * rng.random()
    else:
        load = _normalize([max(1e-3, rng.gauss(1.0, 0.12)) for _ in range(E)])
        importance = _normalize([max(1e-3, rng.gauss(1.0, 0.08)) for _ in range(E)])
        progress = step / max(spec.steps, 1)
        top_p = (0.85 if spec.peaky else 0.2 + 0.08 * progress) + 0.01 * rng.random()
        entropy = (0.15 if spec.peaky else 0.8 - 0.15 * progress) * math.log(E) + 0.02 * rng.random()
    row: dict[str, float | int] = {
        "step": step,
        "layer": layer,
        "tokens": spec.tokens_per_step,
        "imp_cv2": _cv2(importance),
        "load_cv2": _cv2(load),
        "usage_frac": sum(1 for x in load if x > 0) / E,
        "topk_prob_mean": top_p,
        "imp_entropy": _entropy(importance),
        "load_entropy": _entropy(load),
        "entropy_mean": entropy,
        "max_logit": 4.0 + rng.random(),
        "aux_loss": 0.01 * (1 + _cv2(load)),
        "z_loss": 0.0,
        "drop_frac": 0.0,
        "top1_p_mean": top_p,
        "max_frac": max(load),
        "num_active": sum(1 for x in load if x > 0),
        "live_experts": E,
    }
    for family, values in (("load", load), ("demand", load), ("importance", importance)):
        for i, value in enumerate(values):
            row[expert_column(family, i)] = value
    return row


def router_columns(num_experts: int) -> list[str]:
    """Every declared router.csv column, then the per-expert vectors of ``num_experts`` experts."""
    return [*ROUTER_COLUMNS, *expert_columns(num_experts)]


def scalar_columns(extra_metrics: int = 0) -> list[str]:
    """Every declared scalars.csv column, one ``lr_<group>`` per :data:`LR_GROUPS`, and ``metric_NNN``
    extras (undeclared metrics, DOUBLE by the format's rule)."""
    return [
        *SCALARS_COLUMNS,
        *(LR_PREFIX + group for group in LR_GROUPS),
        *(f"metric_{i:03d}" for i in range(extra_metrics)),
    ]


def write_synthetic_run(root: str | Path, spec: SyntheticRun) -> Path:
    """Write `root/spec.run_id/` in the documented format and return its path."""
    rng = random.Random(spec.seed)
    run_dir = Path(root) / spec.run_id
    config = {
        "preset": spec.preset,
        "num_layers": spec.num_layers,
        "num_experts": spec.num_experts,
        "num_iterations": spec.steps,
        "seed": spec.seed,
        "optim": {"lr_embed": 0.3, "lr_muon": 0.05},
        "router": {"temp_init": 1.5, "balance": "aux"},
    }
    header = new_run_header(
        spec.run_id,
        spec.preset,
        config,
        num_layers=spec.num_layers,
        num_experts=spec.num_experts,
        top_k=1,
        tokens_per_step=spec.tokens_per_step,
        total_steps=spec.steps,
    )
    writer = RunLogWriter(
        run_dir,
        header,
        scalar_columns=scalar_columns(spec.extra_metrics),
        router_columns=router_columns(spec.num_experts),
        domain_columns=list(DOMAIN_TABLE.declared) if spec.domains else None,
    )
    time_ms = 0.0
    best = math.inf
    wall0 = 1.79e9
    last_step = spec.steps if spec.finished else spec.steps - 1
    for step in range(last_step + 1):
        progress = step / spec.steps
        base = spec.final_loss + (10.9 - spec.final_loss) * math.exp(-8.0 * progress)
        is_val = step % spec.val_every == 0 or step == spec.steps
        val_loss = base + 0.02 + 0.01 * rng.random() if is_val else None
        if val_loss is not None:
            best = min(best, val_loss)
        train = step < spec.steps
        if train:
            time_ms += spec.ms_per_step * (1 + 0.05 * rng.random())
        router_rows = []
        if train and step % spec.router_every == 0:
            router_rows = [_layer_row(spec, rng, step, layer) for layer in range(spec.num_layers)]
        lr_mult = 1.0 if progress < 0.35 else max(0.0, 1 - (progress - 0.35) / 0.65)
        scalars = {
            "step": step,
            "time_ms": time_ms,
            "wall_time": wall0 + time_ms / 1000,
            "tokens": (step + 1) * spec.tokens_per_step if train else spec.steps * spec.tokens_per_step,
            "val_loss": val_loss,
            "val_tokens": 10_485_760 if step == spec.steps else (262_144 if is_val else None),
        }
        if train:
            clipped = rng.random() < spec.clipped_frac
            scalars.update(
                {
                    "loss": base + 0.05 * rng.gauss(0, 1),
                    "loss_main": base - 0.01,
                    "loss_aux": 0.01 * spec.num_layers,
                    "lr_embed": 0.3 * lr_mult,
                    "lr_attn": 0.05 * lr_mult,
                    "lr_router": 0.01 * lr_mult,
                    "momentum": min(0.95, 0.85 + 0.1 * step / 300),
                    "router_temp": 1.5 - 0.5 * progress,
                    "logit_cap": 13.757,
                    "gumbel_scale": 0.0,
                    "grad_norm": 0.8 + 0.4 * math.exp(-4.0 * progress),
                    "peak_mem_mib": 61_440.0,
                    "tokens_per_s": (step + 1) * spec.tokens_per_step / (time_ms / 1000),
                    "window_blocks": 3 + int(10 * progress),
                    "active_experts": spec.num_experts,
                    "router_grad_norm": 0.5 + rng.random(),
                    "router_clip": 1.2,
                    "router_clipped": int(clipped),
                }
            )
            if router_rows:
                for column in ROUTER_SUMMARY_COLUMNS:  # router_<x>: the mean over layers of <x>
                    key = column.removeprefix("router_")
                    scalars[column] = sum(r[key] for r in router_rows) / len(router_rows)
            for i in range(spec.extra_metrics):
                scalars[f"metric_{i:03d}"] = rng.random()
        domain_rows = []
        if spec.domains and is_val and train:
            for layer in range(spec.num_layers):
                for d, domain in enumerate(DOMAINS):
                    for expert in range(spec.num_experts):
                        favoured = expert % len(DOMAINS) == d
                        domain_rows.append(
                            {
                                "step": step,
                                "layer": layer,
                                "domain": domain,
                                "expert": expert,
                                "tokens": int((900 if favoured else 100) * (1 + 0.1 * rng.random())),
                            }
                        )
        writer.log_step(scalars, router_rows, domain_rows)
    state = "finished" if spec.finished else "running"
    writer.write_status(
        state,
        last_step,
        time_ms,
        final_val_loss=val_loss if spec.finished else None,
        best_val_loss=best,
        abort_reason=None,
        error=None,
    )
    writer.close()
    return run_dir
