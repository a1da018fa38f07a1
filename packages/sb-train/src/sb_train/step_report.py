"""A training step's numbers for the log: the host copy, the checks that abort a run, and the scalar row.

:func:`check_loss` is the one host copy of a step's device numbers (losses, clip, max logit); a non-finite
loss or an infinite router logit raises :class:`TrainingAborted`. :func:`step_row` turns them and the step's
schedule values into the ``scalars.csv`` row (column names: docs/log-format.md).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from sb_train.schedules import StepValues

if TYPE_CHECKING:
    from sb_model import RoutingReport
    from sb_train.setup import TrainParts

__all__ = ["TrainingAborted", "check_loss", "final_row", "step_max_logit", "step_row"]


class TrainingAborted(RuntimeError):
    """The run stopped because a check failed (non-finite loss, suspicious router logits)."""


def check_loss(step: int, out: dict[str, torch.Tensor]) -> dict[str, float]:
    """One host copy of the step's numbers; a non-finite loss or an infinite max router logit aborts the run
    (on every rank alike)."""
    keys = sorted(out)
    host = torch.stack([out[k].float().reshape(()) for k in keys]).cpu().tolist()
    vals = dict(zip(keys, host, strict=True))
    loss = vals["loss_main"] + vals["loss_aux"]
    if not math.isfinite(loss):
        raise TrainingAborted(f"non-finite training loss ({loss}) at step {step}")
    max_logit = vals.get("step_max_logit")
    if max_logit is not None and math.isinf(max_logit):
        raise TrainingAborted(f"router max_logit suspicious ({max_logit}) at step {step}")
    return vals


def step_max_logit(bank: Any, before: torch.Tensor) -> torch.Tensor:
    """This step's max logit: the mean over layers of each layer's max logit (averaged over micro-batches),
    NaN when no layer had more than one live expert. Device ops only; ``before`` is
    ``bank.metrics.max_logit_totals()`` taken before the step."""
    delta = bank.metrics.max_logit_totals() - before
    per_layer = delta[:, 0] / delta[:, 1]
    return torch.nanmean(per_layer)


def step_row(step: int, v: StepValues, host: dict[str, float], now_ms: float, parts: TrainParts,
             report: RoutingReport | None) -> dict[str, Any]:
    """The ``scalars.csv`` row of a trained step (``host`` from :func:`check_loss`)."""
    device = parts.device
    tokens = (step + 1) * parts.tokens_per_step
    row: dict[str, Any] = {
        "step": step,
        "time_ms": now_ms,
        "wall_time": time.time(),
        "tokens": tokens,
        "loss": host["loss_main"] + host["loss_aux"],
        "loss_main": host["loss_main"],
        "loss_aux": host["loss_aux"],
        "momentum": v.momentum,
        "router_temp": v.temperature,
        "logit_cap": v.logit_cap if v.logit_cap > 0 else None,
        "gumbel_scale": 1.0 if v.gumbel else 0.0,
        "window_blocks": v.window_blocks,
        "active_experts": v.active_experts,
        "tokens_per_s": tokens / max(now_ms / 1000, 1e-9) if now_ms > 0 else None,
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    for g in parts.opt.param_groups:
        row[f"lr_{g['name']}"] = g["lr"]
    if "router_grad_norm" in host:
        clip = host["router_clip"]
        row.update(router_grad_norm=host["router_grad_norm"],
                   router_clip=clip if math.isfinite(clip) else None,
                   router_clipped=int(host["router_clipped"]))
    if report is not None and report.summary:
        s = report.summary
        row.update(router_imp_cv2=s["router/imp_cv2"], router_load_cv2=s["router/load_cv2"],
                   router_usage_frac=s["router/usage_frac"], router_topk_prob_mean=s["router/topk_prob_mean"],
                   router_max_logit=s["router/max_logit"])
    return row


def final_row(step: int, time_ms: float, tokens_per_step: int) -> dict[str, Any]:
    """The row of the last step, which only validates (``step`` steps were trained)."""
    return {"step": step, "time_ms": time_ms, "wall_time": time.time(), "tokens": step * tokens_per_step}
