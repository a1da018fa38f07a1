"""The training loop (spec 5.3, with the defects of spec 7 fixed).

One optimizer step ``s`` of :meth:`Trainer.run`:

1. schedule values for ``s`` (LR multipliers, momentum, window, temperature, cap, Gumbel, active experts) are
   computed on the host and written into the model's schedule *tensors* (no recompiles);
2. a validation at the top of the step when it is due (untimed; deterministic: no Gumbel noise);
3. ``grad_accum_steps`` micro-batches of forward + backward of (CE + aux) / accum, loss sums kept on the
   device;
4. the fixed, bucketed gradient all-reduce; the router-only clip (AutoClip, on the device); ``opt.step()``;
5. at logging steps only, one host copy of the step's numbers (losses, clip, router metrics) — a non-finite
   loss stops the run there, before any checkpoint of the bad state is written.

Checkpoints hold everything the next step depends on (model, optimizer, loader position, RNG states, clip
and logit-statistics state, accumulated router metrics, timing), so a resumed run repeats the uninterrupted
one bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sb_model import GPT
from sb_train.autoclip import RouterClip
from sb_train.checkpoint import CheckpointManager
from sb_train.code_version import code_version, make_run_id
from sb_train.config import TrainConfig, micro_tokens, validation_steps
from sb_train.console import ProgressPrinter
from sb_train.data_setup import ensure_shards, train_loader, validation_loader
from sb_train.distributed import DistEnv, GradReducer, barrier, broadcast_parameters, setup_distributed
from sb_train.logit_stats import LogitStats
from sb_train.optimizer import MUON_GROUPS, build_optimizer
from sb_train.rng_state import capture_rng_state, restore_rng_state
from sb_train.run_log import RunLogger
from sb_train.stop_signal import StopSignal, any_rank_requested


class TrainingAborted(RuntimeError):
    """The run stopped because a check failed (non-finite loss, suspicious router logits)."""


@dataclass
class TrainResult:
    run_dir: Path
    run_id: str
    state: str  # finished | aborted | stopped
    step: int
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    time_ms: float = 0.0
    val_history: list[tuple[int, float]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss) at logged steps
    abort_reason: str | None = None


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, env: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.env = env or setup_distributed(cfg.run.device)
        run = cfg.run
        if run.threads and self.env.device.type == "cpu":
            torch.set_num_threads(run.threads)
        self.device = self.env.device
        self.N = cfg.schedule.num_iterations
        self.stop_step = min(self.N, run.early_stop_step) if run.early_stop_step else self.N
        mcfg = cfg.model
        self.micro = micro_tokens(cfg.data, mcfg.block_size)
        for what, n in (("train micro-batch", self.micro), ("validation sequence", cfg.data.val_seq_len)):
            if n > mcfg.max_seq_len:
                raise ValueError(f"the {what} has {n} tokens but model.max_seq_len is {mcfg.max_seq_len}; "
                                 f"raise model.max_seq_len or lower the batch")
        if self.env.is_main and self.micro * cfg.data.grad_accum_steps != cfg.data.tokens_per_rank:
            print(f"[sb-train] micro-batch {self.micro} tokens (block-aligned) x {cfg.data.grad_accum_steps} "
                  f"= {self.micro * cfg.data.grad_accum_steps} tokens per rank per step "
                  f"(requested {cfg.data.tokens_per_rank})", file=sys.stderr)
        self.tokens_per_step = self.micro * cfg.data.grad_accum_steps * self.env.world_size

        # run directory and checkpoints (resume picks the run directory of its checkpoint)
        self.ckpt_path: Path | None = None
        out = Path(run.out_dir)
        if resume:
            self.ckpt_path = self._find_checkpoint(resume, out)
        if self.ckpt_path is not None:
            self.run_dir = self.ckpt_path.parent.parent
            self.run_id = self.run_dir.name
        else:
            self.run_id = run.run_name or make_run_id(cfg.preset, run.seed)
            self.run_dir = out / self.run_id
            if self.env.distributed:  # every rank uses rank 0's generated name
                box = [self.run_id]
                dist.broadcast_object_list(box, src=0)
                self.run_id = box[0]
                self.run_dir = out / self.run_id
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=run.keep_last,
                                             keep_best=run.keep_best, rank=self.env.rank,
                                             world_size=self.env.world_size)

        # data, model, optimizer, schedule state
        ensure_shards(cfg.data, self.env)
        torch.manual_seed(run.seed)
        self.model = GPT(mcfg, device=self.device)
        broadcast_parameters(self.model)
        self.loader = train_loader(cfg.data, self.env, self.micro, mcfg.vocab_size)
        budgets = {"intermediate": cfg.data.val_tokens_intermediate, "final": cfg.data.val_tokens_final}
        world = self.env.world_size
        self.val_steps = {k: validation_steps(v, cfg.data.val_tokens, world, cfg.data.val_seq_len)
                          for k, v in budgets.items() if v > 0}
        self.val_loaders = {k: validation_loader(cfg.data, self.env, n, mcfg.vocab_size)
                            for k, n in self.val_steps.items()}
        self.opt = build_optimizer(self.model, cfg.optim)
        self.reducer = GradReducer(list(self.model.parameters()), self.env.world_size)
        bank = self.model.bank
        self.router_params = [p for p in (bank.router_w, bank.router_b)] if bank is not None else []
        o = cfg.optim
        self.router_clip = RouterClip(window=o.autoclip_window, quantile=o.autoclip_quantile,
                                      base_clip=o.router_grad_clip_norm or None, auto=o.router_autoclip,
                                      device=self.device)
        self.logit_stats = LogitStats(device=self.device)
        self.autocast = (run.autocast == "bf16") or (run.autocast == "auto" and self.device.type == "cuda")
        use_compile = run.compile == "on" or (run.compile == "auto" and self.device.type == "cuda")
        self.forward = torch.compile(self.model, dynamic=False) if use_compile else self.model
        self.start_step = 0
        self.time_ms = 0.0
        self.best_val: tuple[float, int] | None = None
        self.val_history: list[tuple[int, float]] = []
        self._active_experts: int | None = None
        self._routing_values: dict[str, Any] = {}
        fault = os.environ.get("SB_TRAIN_FAULT_AT_STEP")
        self._fault_step = int(fault) if fault else None
        self._pending_val: dict[str, Any] = {}
        # Gumbel noise and any other sampling draw from a per-rank stream (restored exactly on resume)
        torch.manual_seed(run.seed * 1000 + self.env.rank + 1)
        if self.ckpt_path is not None:
            self._load_checkpoint(self.ckpt_path)

        # logs (rank 0 writes; other ranks get a logger that does nothing)
        bank_cfg = mcfg.bank if bank is not None else None
        self.logger = RunLogger(
            self.run_dir,
            run_id=self.run_id,
            preset=cfg.preset,
            config=cfg.to_dict(),
            num_layers=mcfg.num_layers,
            num_experts=mcfg.bank.num_experts,
            top_k=mcfg.bank.topk,
            tokens_per_step=self.tokens_per_step,
            total_steps=self.N,
            world_size=self.env.world_size,
            device_name=_device_name(self.device),
            lr_groups=[g["name"] for g in self.opt.param_groups],
            feature_names=list(bank_cfg.feature_slices) if bank_cfg is not None else [],
            wandb=_wandb_settings(cfg) if run.wandb else None,
            resumed_from=(None if self.ckpt_path is None
                          else {"checkpoint": str(self.ckpt_path), "step": self.start_step - 1}),
            extra_header={**code_version(), "config_hash": cfg.hash()},
            enabled=self.env.is_main,
        )
        self.progress = ProgressPrinter(self.N, self.tokens_per_step, every=run.print_every,
                                        num_experts=mcfg.bank.num_experts, enabled=self.env.is_main)
        if self.env.is_main:
            print(self.model.format_parameter_counts(), file=sys.stderr)

    # ------------------------------------------------------------------------------------------ resume
    def _find_checkpoint(self, spec: str, out: Path) -> Path | None:
        if spec != "auto":
            path = Path(spec)
            if (path / "checkpoints").is_dir():
                path = path / "checkpoints"
            found = CheckpointManager(path if path.name == "checkpoints" else path.parent, rank=self.env.rank,
                                      world_size=self.env.world_size).resolve(str(path))
            if found is None:
                raise FileNotFoundError(f"--resume {spec}: no complete checkpoint there")
            return found
        runs = [out / self.cfg.run.run_name] if self.cfg.run.run_name else sorted(out.glob("*/"))
        best: tuple[float, Path] | None = None
        for run_dir in runs:
            ck = run_dir / "checkpoints"
            if not ck.is_dir() or not _same_preset(run_dir, self.cfg.preset):
                continue
            latest = CheckpointManager(ck, rank=self.env.rank, world_size=self.env.world_size).latest()
            if latest is not None and (best is None or latest.stat().st_mtime > best[0]):
                best = (latest.stat().st_mtime, latest)
        if best is None:
            if self.env.is_main:
                print(f"[sb-train] --resume auto: no checkpoint of a {self.cfg.preset!r} run under {out}/; "
                      "starting a new run", file=sys.stderr)
            return None
        return best[1]

    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        bank = self.model.bank
        shared = {
            "step": self.step_done,
            "time_ms": self.time_ms,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "loader": self.loader.state_dict(),
            "router_clip": self.router_clip.state_dict(),
            "logit_stats": self.logit_stats.state_dict(),
            "best_val": self.best_val,
            "val_history": self.val_history,
            "config": self.cfg.to_dict(),
            "model_config": self.cfg.model.to_dict(),
            "routing": self._routing_values,
            "run_id": self.run_id,
        }
        per_rank = {  # each rank's own: RNG streams and its not-yet-reduced router statistics
            "rng": capture_rng_state(),
            "router_metrics": ({k: v.clone() for k, v in bank.metrics.named_buffers()}
                               if bank is not None else {}),
        }
        return shared, per_rank

    def _load_checkpoint(self, path: Path) -> None:
        shared, per_rank = self.checkpoints.load(path, map_location=self.device)
        if shared["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(f"{path} was written by a run with another model configuration; resume with the "
                             "same preset and model settings, or start a new run (--out elsewhere)")
        self._restore(shared, per_rank)
        self.best_val = shared["best_val"]
        self.val_history = list(shared["val_history"])
        self.time_ms = float(shared["time_ms"])
        self.start_step = int(shared["step"]) + 1
        if self.env.is_main:
            print(f"[sb-train] resumed from {path} (step {shared['step']}, {self.time_ms / 1000:.1f} s of "
                  "training so far)", file=sys.stderr)

    def _restore(self, shared: dict[str, Any], per_rank: dict[str, Any]) -> None:
        """Put back everything the next step depends on (the inverse of :meth:`_state`)."""
        self.model.load_state_dict(shared["model"])
        self.opt.load_state_dict(shared["optimizer"])
        self.loader.load_state_dict(shared["loader"])
        self.router_clip.load_state_dict(shared["router_clip"])
        self.logit_stats.load_state_dict(shared["logit_stats"])
        bank = self.model.bank
        if bank is not None:
            for name, buf in bank.metrics.named_buffers():
                buf.copy_(per_rank["router_metrics"][name])
        restore_rng_state(per_rank["rng"])
        self._active_experts = None

    def compile_warmup(self) -> None:
        """``run.warmup_steps`` untimed training steps (half in the single-expert phase, half with every
        expert live) and one evaluation forward, so that compilation happens before the clock starts;
        then every state (model, optimizer, data position, RNG, clip, statistics) is put back (spec 5.2)."""
        k = self.cfg.run.warmup_steps
        if k <= 0:
            return
        self.step_done = self.start_step - 1
        saved = copy.deepcopy(self._state())
        sched = self.cfg.schedule
        all_live = max((s for s, _ in sched.expert_activation_schedule), default=0)
        t = time.perf_counter()
        for i in range(k):
            step = self.start_step if i < k // 2 else max(all_live, self.start_step)
            self.train_step(step, self._apply_schedule(step))
        loader = next(iter(self.val_loaders.values()), None)
        if loader is not None:
            self.model.eval()
            inputs, targets = next(iter(loader))
            with torch.no_grad(), self._autocast():
                self.forward(inputs[None], targets[None])
            self.model.train()
        self.opt.zero_grad(set_to_none=True)
        self._restore(*saved)
        if self.env.is_main:
            took = time.perf_counter() - t
            print(f"[sb-train] warm-up: {k} untimed steps in {took:.1f} s (states restored)", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ schedule
    def _apply_schedule(self, step: int, evaluation: bool = False):
        mcfg = self.cfg.model
        v = self.cfg.schedule.at(step, num_experts=mcfg.bank.num_experts,
                                 max_window_tokens=mcfg.max_window_tokens, block_size=mcfg.block_size,
                                 evaluation=evaluation)
        self.model.set_window_blocks(v.window_blocks)
        if self.model.bank is not None:
            self.model.routing_schedule.set_(
                temperature=v.temperature, logit_cap=v.logit_cap, gumbel=v.gumbel,
                active_experts=v.active_experts, router_frozen=v.router_frozen,
                adapters_frozen=v.adapters_frozen,
            )
            if v.active_experts != self._active_experts:  # lazy adapter init when experts first go live
                self.model.bank.maybe_init_adapters(self.model.sched_active_mask)
                self._active_experts = v.active_experts
        self.model.update_head_tying(step)
        if not evaluation:
            self._routing_values = {"temperature": v.temperature, "logit_cap": v.logit_cap,
                                    "active_experts": v.active_experts, "window_blocks": v.window_blocks}
            for g in self.opt.param_groups:
                g["lr"] = g["initial_lr"] * v.lr_for(g["name"])
                if g["name"] in MUON_GROUPS:
                    g["momentum"] = v.momentum
        return v

    # ------------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, step: int, budget: str) -> float | None:
        loader = self.val_loaders.get(budget)
        if loader is None:
            return None
        self.model.eval()
        self._apply_schedule(step, evaluation=True)
        total = torch.zeros((), device=self.device)
        n = 0
        for inputs, targets in loader:
            with self._autocast():
                out = self.forward(inputs[None], targets[None])
            total += out.ce_loss.float()
            n += 1
        total /= max(n, 1)
        if self.env.distributed:  # SUM then divide: gloo has no AVG
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= self.env.world_size
        self.model.train()
        self._apply_schedule(step)
        loss = float(total)
        if not math.isfinite(loss):
            raise TrainingAborted(f"non-finite validation loss ({loss}) at step {step}")
        self.val_history.append((step, loss))
        if self.best_val is None or loss < self.best_val[0]:
            self.best_val = (loss, step)
        self._pending_val = {"val_loss": loss, "val_tokens": loader.num_tokens}
        self.progress.validation(step, loss, self.time_ms)
        return loss

    def _autocast(self):
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int, values) -> dict[str, torch.Tensor]:
        accum = self.cfg.data.grad_accum_steps
        self.opt.zero_grad(set_to_none=True)
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        bank = self.model.bank
        before = bank.metrics.max_logit_totals() if bank is not None else None
        for _ in range(accum):
            inputs, targets = next(self.loader)
            with self._autocast():
                out = self.forward(inputs[None], targets[None])
            (out.loss / accum).backward()
            ce_sum += out.ce_loss.detach().float()
            aux_sum += out.aux_loss.detach().float()
        self.reducer.launch()
        self.reducer.finish()
        clip = None
        if values.active_experts <= 1:
            # one live expert: the bank routes deterministically and the routers get only zero gradients;
            # drop them so that Adam does not count the step and AutoClip does not record a zero norm
            for p in self.router_params:
                p.grad = None
        elif self.router_params and any(p.grad is not None for p in self.router_params):
            clip = self.router_clip.clip_(self.router_params)
        self.opt.step()
        result = {"loss_main": ce_sum / accum, "loss_aux": aux_sum / accum}
        if clip is not None:
            result.update(router_grad_norm=clip.norm, router_clip=clip.clip, router_clipped=clip.clipped)
        if before is not None:
            max_logit = _step_max_logit(bank, before)
            result["step_max_logit"] = max_logit
            self.logit_stats.update(max_logit, values.logit_cap)
        return result

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        result = TrainResult(self.run_dir, self.run_id, "finished", self.start_step, time_ms=self.time_ms)
        self.step_done = self.start_step - 1
        state = "running"
        try:
            with StopSignal() as stop:
                self.model.train()
                self.compile_warmup()
                if self.start_step == 0 and cfg.run.validate_at_start:
                    self._apply_schedule(0)
                    self.validate(0, "intermediate")
                self.logger.write_status("running", max(self.step_done, 0), self.time_ms)
                barrier()
                t0 = time.perf_counter()
                if self.start_step > self.stop_step:
                    state = "finished"
                    if env.is_main:
                        print("[sb-train] the checkpoint is the end of the run: nothing left to train",
                              file=sys.stderr)
                for step in range(self.start_step, self.N + 1):
                    final, last = step == self.N, step == self.stop_step
                    values = self._apply_schedule(step)
                    every = cfg.run.val_loss_every
                    val_loss = None
                    if last or (step > 0 and every > 0 and step % every == 0):
                        self.time_ms += _elapsed_ms(t0, self.device)
                        val_loss = self.validate(step, "final" if final else "intermediate")
                        t0 = time.perf_counter()
                    ckpt_every = cfg.run.checkpoint_every
                    if last or (ckpt_every and step > self.start_step and step % ckpt_every == 0):
                        # untimed; holds the state after step - 1 and the validation measured on it
                        self.time_ms += _elapsed_ms(t0, self.device)
                        if not last or cfg.run.save_final:
                            self.save_checkpoint(step - 1, val_loss=val_loss)
                        t0 = time.perf_counter()
                    if last:
                        self._log_final_row(step)
                        state = "finished"
                        break
                    out = self.train_step(step, values)
                    self.step_done = step
                    if step == self._fault_step:  # test hook: die like a killed process (no cleanup)
                        os._exit(17)
                    before_ckpt = bool(ckpt_every) and (step + 1) % ckpt_every == 0
                    log_now = step % cfg.run.log_every == 0 or step == self.stop_step - 1 or before_ckpt
                    router_now = step % cfg.run.router_log_every == 0 or step == self.stop_step - 1
                    if log_now or router_now:
                        now_ms = self.time_ms + _elapsed_ms(t0, self.device)
                        loss = self._log_step(step, values, out, now_ms, with_router=router_now)
                        result.losses.append((step, loss))
                    if (step + 1) % cfg.run.stop_check_every == 0 and any_rank_requested(stop.requested):
                        self.time_ms += _elapsed_ms(t0, self.device)
                        self._check_loss(step, out)
                        self.save_checkpoint(step)
                        state = "stopped"
                        reason = (f"stopped by {stop.signal_name or 'a signal'} after step {step}; resume "
                                  "with --resume auto")
                        result.abort_reason = reason
                        if env.is_main:
                            print(f"[sb-train] {reason}", file=sys.stderr)
                        break
        except TrainingAborted as exc:
            state = "aborted"
            result.abort_reason = str(exc)
            if env.is_main:
                print(f"[sb-train] aborted: {exc}. The last good checkpoint (if any) is in "
                      f"{self.run_dir / 'checkpoints'}", file=sys.stderr)
        except BaseException as exc:
            self.logger.write_status("failed", max(self.step_done, 0), self.time_ms, error=repr(exc))
            self.logger.close("failed")
            raise
        result.state = state if state in ("finished", "stopped") else "aborted"
        result.step = self.step_done
        result.time_ms = self.time_ms
        result.val_history = list(self.val_history)
        final_val = self.val_history[-1][1] if state == "finished" and self.val_history else None
        result.final_val_loss = final_val
        result.best_val_loss = self.best_val[0] if self.best_val else None
        extra = {
            "final_val_loss": final_val,
            "best_val_loss": result.best_val_loss,
            "best_val_step": self.best_val[1] if self.best_val else None,
            "abort_reason": result.abort_reason,
            **{k: (v if math.isfinite(v) else None) for k, v in self.logit_stats.summary().items()},
        }
        status = {"finished": "finished", "stopped": "aborted", "aborted": "aborted"}[result.state]
        self.logger.write_status(status, max(self.step_done, 0), self.time_ms, **extra)
        self.logger.close(status)
        if env.is_main:
            self.progress.finish(result.state, final_val, self.time_ms)
        return result

    # ------------------------------------------------------------------------------------------ logging
    def _log_step(
        self, step: int, v, out: dict[str, torch.Tensor], now_ms: float, with_router: bool
    ) -> float:
        vals = self._check_loss(step, out)
        loss = vals["loss_main"] + vals["loss_aux"]
        ml = vals.get("step_max_logit")
        if ml is not None and (ml == float("inf") or ml == float("-inf")):
            raise TrainingAborted(f"router max_logit suspicious ({ml}) at step {step}")
        self.reducer.check()
        report = None
        if with_router and self.model.bank is not None:
            if self.env.distributed:
                for buf in self.model.bank.metrics.buffers():
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            report = self.model.bank.read_metrics()
        tokens = (step + 1) * self.tokens_per_step
        scalars: dict[str, Any] = {
            "step": step,
            "time_ms": now_ms,
            "wall_time": time.time(),
            "tokens": tokens,
            "loss": loss,
            "loss_main": vals["loss_main"],
            "loss_aux": vals["loss_aux"],
            "momentum": v.momentum,
            "router_temp": v.temperature,
            "logit_cap": v.logit_cap if v.logit_cap > 0 else None,
            "gumbel_scale": 1.0 if v.gumbel else 0.0,
            "window_blocks": v.window_blocks,
            "active_experts": v.active_experts,
            "tokens_per_s": tokens / max(now_ms / 1000, 1e-9) if now_ms > 0 else None,
            "peak_mem_mib": (torch.cuda.max_memory_allocated(self.device) / 2**20
                             if self.device.type == "cuda" else None),
        }
        for g in self.opt.param_groups:
            scalars[f"lr_{g['name']}"] = g["lr"]
        if "router_grad_norm" in vals:
            clip = vals["router_clip"]
            scalars.update(router_grad_norm=vals["router_grad_norm"],
                           router_clip=clip if math.isfinite(clip) else None,
                           router_clipped=int(vals["router_clipped"]))
        if report is not None and report.summary:
            s = report.summary
            scalars.update(router_imp_cv2=s["router/imp_cv2"], router_load_cv2=s["router/load_cv2"],
                           router_usage_frac=s["router/usage_frac"],
                           router_topk_prob_mean=s["router/topk_prob_mean"],
                           router_max_logit=s["router/max_logit"])
        scalars.update(self._pending_val)
        self._pending_val = {}
        self.logger.log_step(step, scalars, report, tokens_per_layer=self.tokens_per_step)
        if step % 50 == 0:
            self.logger.write_status("running", step, now_ms)
        self.progress.update(step, loss, now_ms, report.summary if report is not None else None)
        return loss

    def _check_loss(self, step: int, out: dict[str, torch.Tensor]) -> dict[str, float]:
        """One host copy of the step's numbers; a non-finite loss aborts the run (on every rank alike)."""
        keys = sorted(out)
        host = torch.stack([out[k].float().reshape(()) for k in keys]).cpu().tolist()
        vals = dict(zip(keys, host, strict=True))
        loss = vals["loss_main"] + vals["loss_aux"]
        if not math.isfinite(loss):
            raise TrainingAborted(f"non-finite training loss ({loss}) at step {step}")
        return vals

    def _log_final_row(self, step: int) -> None:
        row: dict[str, Any] = {"step": step, "time_ms": self.time_ms, "wall_time": time.time(),
                               "tokens": step * self.tokens_per_step}
        row.update(self._pending_val)
        self._pending_val = {}
        self.logger.log_step(step, row, None)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, val_loss: float | None = None) -> Path:
        """Save the state after the update of ``step`` (collective: every rank calls it)."""
        self.step_done = step
        shared, per_rank = self._state()
        return self.checkpoints.save(step, shared, per_rank, val_loss=val_loss)


# ---------------------------------------------------------------------------------------------- helpers
def _elapsed_ms(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1000.0


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _wandb_settings(cfg: TrainConfig) -> dict[str, Any]:
    r = cfg.run
    return {"mode": r.wandb_mode, "project": r.wandb_project, "entity": r.wandb_entity or None,
            "name": r.run_name or None}


def _same_preset(run_dir: Path, preset: str) -> bool:
    import json

    try:
        return json.loads((run_dir / "run.json").read_text())["preset"] == preset
    except (OSError, ValueError, KeyError):
        return True  # a run directory without a header (killed before logging): judge by its checkpoints


def _step_max_logit(bank, before: torch.Tensor) -> torch.Tensor:
    """This step's max logit: the mean over layers of each layer's max logit (averaged over micro-batches),
    NaN when no layer had more than one live expert. Device ops only."""
    delta = bank.metrics.max_logit_totals() - before
    per_layer = delta[:, 0] / delta[:, 1]
    return torch.nanmean(per_layer)
