"""Building a run before its first step: checks, run directory, data, model, optimizer, clip and logs.

:func:`build_parts` does every set-up job once, applying the run's device plan (:mod:`sb_train.device_plan`:
autocast, compile, attention, experts, collectives, buckets, pinned memory, Muon dtype), and returns a
:class:`TrainParts`, the plain bundle the loop
(:mod:`sb_train.trainer`) works with; :func:`open_logs` opens the CSV/W&B log and the console printer once the
starting step is known (after a resume).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sb_runlog import RUN_FILE
from torch import nn

from sb_data.loader import DistributedTokenLoader
from sb_data.validation import ValidationLoader
from sb_model import GPT
from sb_muon import MuonAdamW
from sb_train.autoclip import RouterClip
from sb_train.checkpoint import CheckpointManager, find_checkpoint, find_latest_of_preset, list_checkpoints
from sb_train.checkpoint.layout import CHECKPOINTS_DIR
from sb_train.code_version import code_version, make_run_id
from sb_train.config import TrainConfig, micro_tokens, validation_steps
from sb_train.config_changes import segments_after
from sb_train.data_setup import ensure_shards, train_loader, validation_loader
from sb_train.device_plan import DevicePlan, plan_for
from sb_train.distributed import (
    DistEnv,
    GradReducer,
    broadcast_parameters,
    launch_world_size,
    resolve_device,
    setup_distributed,
)
from sb_train.errors import RunError, RunExistsError
from sb_train.logit_stats import LogitStats
from sb_train.logs import ProgressPrinter, RunLogger
from sb_train.optimizer import build_optimizer
from sb_train.run_lock import RunLock

__all__ = ["TrainParts", "build_parts", "open_logs"]


@dataclass
class TrainParts:
    """Everything the training loop works with, built once by :func:`build_parts`."""

    cfg: TrainConfig
    env: DistEnv
    plan: DevicePlan  # every device-dependent decision, applied by build_parts
    micro_tokens: int  # tokens of one micro-batch per rank (block-aligned)
    tokens_per_step: int  # over every rank and micro-batch
    stop_step: int  # the step that ends this run: num_iterations or run.early_stop_step
    run_dir: Path
    run_id: str
    run_lock: RunLock | None  # rank 0's lock on run_dir (None on the other ranks); released when the run ends
    resume_from: Path | None  # the checkpoint to resume from (None: a fresh run)
    checkpoints: CheckpointManager
    model: GPT
    forward: Callable[..., Any]  # the model, compiled when run.compile says so
    loader: DistributedTokenLoader
    val_loaders: dict[str, ValidationLoader]  # "intermediate" / "final" budgets (a budget of 0 has none)
    opt: MuonAdamW
    reducer: GradReducer
    router_params: list[nn.Parameter]  # what AutoClip clips (empty for a dense model)
    router_clip: RouterClip
    logit_stats: LogitStats

    @property
    def device(self) -> torch.device:
        return self.env.device


def build_parts(cfg: TrainConfig, *, resume: str | None = None, env: DistEnv | None = None) -> TrainParts:
    """Set up a run: distributed environment, batch checks, the checkpoint to resume from (``resume``:
    ``"auto"`` or a run/checkpoint path), run directory, data, model, optimizer, gradient reducer, router
    clip and logit statistics. Ends by seeding this rank's sampling stream (Gumbel noise)."""
    run = cfg.run
    device = env.device if env is not None else resolve_device(run.device)
    if run.threads and device.type == "cpu":
        torch.set_num_threads(run.threads)  # before the plan: the CPU expert kernel's choice counts threads
    plan = plan_for(device, cfg, world_size=env.world_size if env is not None else launch_world_size())
    env = env or setup_distributed(device, backend=plan.collective_backend)
    _check_head_untying(cfg)
    micro = _micro_tokens(cfg, env)
    resume_from = _find_resume(cfg, resume, env)
    run_dir, run_id = _run_directory(cfg, resume_from, env)
    run_lock = _lock_run_directory(run_dir, fresh=resume_from is None, env=env)
    try:
        return _assemble(cfg, env, plan, micro, resume_from, run_dir, run_id, run_lock)
    except BaseException:
        if run_lock is not None:
            run_lock.release(discard_empty=True)
        raise


def _assemble(cfg: TrainConfig, env: DistEnv, plan: DevicePlan, micro: int, resume_from: Path | None,
              run_dir: Path, run_id: str, run_lock: RunLock | None) -> TrainParts:
    """The rest of :func:`build_parts`, once the run folder is this process's (its lock is held)."""
    run, mcfg = cfg.run, cfg.model
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=run.keep_last, keep_best=run.keep_best,
                                    rank=env.rank, world_size=env.world_size)

    ensure_shards(cfg.data, env)
    torch.manual_seed(run.seed)
    model = GPT(plan.model_config(mcfg), device=env.device)
    broadcast_parameters(model)
    budgets = {"intermediate": cfg.data.val_tokens_intermediate, "final": cfg.data.val_tokens_final}
    val_loaders = {
        name: validation_loader(cfg.data, env, validation_steps(tokens, cfg.data.val_tokens, env.world_size,
                                                                cfg.data.val_seq_len), mcfg.vocab_size,
                                pin_memory=plan.pin_memory)
        for name, tokens in budgets.items() if tokens > 0
    }
    o = cfg.optim
    bank = model.bank
    parts = TrainParts(
        cfg=cfg,
        env=env,
        plan=plan,
        micro_tokens=micro,
        tokens_per_step=micro * cfg.data.grad_accum_steps * env.world_size,
        stop_step=min(cfg.schedule.num_iterations, run.early_stop_step or cfg.schedule.num_iterations),
        run_dir=run_dir,
        run_id=run_id,
        run_lock=run_lock,
        resume_from=resume_from,
        checkpoints=checkpoints,
        model=model,
        forward=plan.compiled(model),
        loader=train_loader(cfg.data, env, micro, mcfg.vocab_size, pin_memory=plan.pin_memory),
        val_loaders=val_loaders,
        opt=build_optimizer(model, o, seed=run.seed, compute_dtype=plan.muon_compute_dtype),
        reducer=GradReducer(list(model.parameters()), env.world_size, bucket_bytes=plan.grad_bucket_bytes),
        router_params=[bank.router_w, bank.router_b] if bank is not None else [],
        router_clip=RouterClip(window=o.autoclip_window, quantile=o.autoclip_quantile,
                               base_clip=o.router_grad_clip_norm or None, auto=o.router_autoclip,
                               device=env.device),
        logit_stats=LogitStats(device=env.device),
    )
    # Gumbel noise and any other sampling draw from a per-rank stream (restored exactly on resume)
    torch.manual_seed(run.seed * 1000 + env.rank + 1)
    return parts


def open_logs(parts: TrainParts, *, resumed_step: int | None) -> tuple[RunLogger, ProgressPrinter]:
    """The run's log (rank 0 writes; the other ranks get one that does nothing) and console printer;
    ``resumed_step`` is the step of the checkpoint this run resumed from (None for a fresh run)."""
    cfg, env, model = parts.cfg, parts.env, parts.model
    mcfg = cfg.model
    n = cfg.schedule.num_iterations
    routed_experts = mcfg.experts_per_layer or mcfg.bank.num_experts  # per router (layer_moe: its own)
    logger = RunLogger(
        parts.run_dir,
        run_id=parts.run_id,
        preset=cfg.preset,
        config=cfg.to_dict(),
        num_layers=mcfg.num_layers,
        num_experts=routed_experts,
        top_k=mcfg.bank.topk,
        tokens_per_step=parts.tokens_per_step,
        total_steps=n,
        world_size=env.world_size,
        device_name=torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
        lr_groups=[g["name"] for g in parts.opt.param_groups],
        feature_names=list(model.bank.config.feature_slices) if model.bank is not None else [],
        wandb=_wandb_settings(cfg) if cfg.run.wandb else None,
        resumed_from=(None if parts.resume_from is None
                      else {"checkpoint": str(parts.resume_from), "step": resumed_step}),
        extra_header={**code_version(), "config_hash": cfg.hash(), **model.parameter_summary(),
                      "segments": _segments(parts, resumed_step), "device_plan": parts.plan.to_dict()},
        enabled=env.is_main,
    )
    progress = ProgressPrinter(n, parts.tokens_per_step, every=cfg.run.print_every,
                               num_experts=routed_experts, enabled=env.is_main)
    if env.is_main:
        print(model.format_parameter_counts(), file=sys.stderr)
        print(f"[sb-train] {parts.plan.describe()}", file=sys.stderr)
    return logger, progress


# ---------------------------------------------------------------------------------------------- helpers
def _segments(parts: TrainParts, resumed_step: int | None) -> list[dict[str, Any]]:
    """run.json's segment history with this part of the run appended (rank 0 reads the previous run.json)."""
    previous: dict[str, Any] = {}
    if parts.env.is_main and parts.resume_from is not None:
        try:
            loaded = json.loads((parts.run_dir / RUN_FILE).read_text(encoding="utf-8"))
            previous = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            previous = {}
    start = 0 if resumed_step is None else resumed_step + 1
    return segments_after(previous, parts.cfg.to_dict(), parts.cfg.hash(), start_step=start,
                          resumed_from=None if parts.resume_from is None else str(parts.resume_from))


def _check_head_untying(cfg: TrainConfig) -> None:
    mcfg = cfg.model
    if cfg.schedule.untie_lm_head_frac >= 0 and not (mcfg.tie_lm_head and mcfg.untie_lm_head_later):
        raise ValueError("schedule.untie_lm_head_frac >= 0 unties a tied head: set model.tie_lm_head=true "
                         "and model.untie_lm_head_later=true (or schedule.untie_lm_head_frac=-1)")
    if mcfg.untie_lm_head_later and cfg.schedule.untie_lm_head_frac < 0:
        raise ValueError("model.untie_lm_head_later=true needs schedule.untie_lm_head_frac >= 0 (the "
                         "fraction of training after which the head gets its own weights)")


def _micro_tokens(cfg: TrainConfig, env: DistEnv) -> int:
    """The block-aligned micro-batch; it and the validation sequence must fit model.max_seq_len."""
    data, mcfg = cfg.data, cfg.model
    micro = micro_tokens(data, mcfg.block_size)
    for what, n in (("train micro-batch", micro), ("validation sequence", data.val_seq_len)):
        if n > mcfg.max_seq_len:
            raise ValueError(f"the {what} has {n} tokens but model.max_seq_len is {mcfg.max_seq_len}; "
                             f"raise model.max_seq_len or lower the batch")
    if env.is_main and micro * data.grad_accum_steps != data.tokens_per_rank:
        print(f"[sb-train] micro-batch {micro} tokens (block-aligned) x {data.grad_accum_steps} "
              f"= {micro * data.grad_accum_steps} tokens per rank per step "
              f"(requested {data.tokens_per_rank})", file=sys.stderr)
    return micro


def _find_resume(cfg: TrainConfig, resume: str | None, env: DistEnv) -> Path | None:
    if not resume:
        return None
    if resume != "auto":
        return find_checkpoint(resume)
    found = find_latest_of_preset(cfg.run.out_dir, cfg.preset, cfg.run.run_name)
    if found is None and env.is_main:
        print(f"[sb-train] --resume auto: no checkpoint of a {cfg.preset!r} run under {cfg.run.out_dir}/; "
              "starting a new run", file=sys.stderr)
    return found


def _lock_run_directory(run_dir: Path, *, fresh: bool, env: DistEnv) -> RunLock | None:
    """Rank 0 takes the run folder's lock (:mod:`sb_train.run_lock`) and, for a new run, refuses a folder that
    already holds one. The outcome is shared, so every rank stops alike when rank 0 cannot go on."""
    lock: RunLock | None = None
    error: Exception | None = None
    if env.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if fresh:
                _refuse_existing_run(run_dir)
        except (RunError, OSError) as exc:
            if lock is not None:
                lock.release()
            error = exc
    if env.distributed:
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise RunError(f"rank 0 cannot use the run folder: {box[0]}")
    if error is not None:
        raise error
    return lock


def _refuse_existing_run(run_dir: Path) -> None:
    """RunExistsError when a new run would go into a folder that holds a run (a reused run.run_name)."""
    found = [name for name in (RUN_FILE, "scalars.csv", CHECKPOINTS_DIR) if (run_dir / name).exists()]
    if not found:
        return
    if list_checkpoints(run_dir / CHECKPOINTS_DIR):
        hint = f"to continue it, add --resume {run_dir} (or --resume auto) to the same command"
    else:
        hint = f"it has no complete checkpoint to continue from; delete {run_dir} to start it again"
    raise RunExistsError(f"{run_dir} already holds a run ({', '.join(found)}): {hint}, or choose another "
                         "run.run_name")


def _run_directory(cfg: TrainConfig, resume_from: Path | None, env: DistEnv) -> tuple[Path, str]:
    """A resumed run keeps the directory of its checkpoint; a new one gets rank 0's generated name."""
    if resume_from is not None:
        run_dir = resume_from.parent.parent
        return run_dir, run_dir.name
    run_id = cfg.run.run_name or make_run_id(cfg.preset, cfg.run.seed)
    if env.distributed:
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    return Path(cfg.run.out_dir) / run_id, run_id


def _wandb_settings(cfg: TrainConfig) -> dict[str, Any]:
    r = cfg.run
    return {"mode": r.wandb_mode, "project": r.wandb_project, "entity": r.wandb_entity or None,
            "name": r.run_name or None}
