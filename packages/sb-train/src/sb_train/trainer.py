"""The training loop: schedule, validation, forward/backward, reduce, clip, step, log, checkpoint.

One optimizer step ``s`` of :meth:`Trainer.run`:

1. the schedule values of ``s`` (:mod:`sb_train.schedules`) go into the model's schedule *tensors* (no
   recompiles) and the optimizer's groups (LR, momentum); head untying when the schedule says so;
2. a validation at the top of the step when it is due (untimed; deterministic: no Gumbel noise);
3. the shared-FFN freeze when due, then ``grad_accum_steps`` micro-batches of forward + backward of
   (CE + aux) / accum, loss sums kept on the device;
4. the fixed, bucketed gradient all-reduce; the router-only clip (AutoClip, on the device); ``opt.step()``;
5. at logging steps only, one host copy of the step's numbers (losses, clip, router metrics) — a non-finite
   loss stops the run there, before any checkpoint of the bad state is written.

Set-up is :mod:`sb_train.setup`; what a checkpoint holds is :mod:`sb_train.train_state`; the log row of a
step is :mod:`sb_train.step_report`. See docs/design/training.md.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sb_model import RoutingReport
from sb_train.callbacks import TrainerCallback
from sb_train.config import TrainConfig
from sb_train.distributed import DistEnv, barrier
from sb_train.domain_routing import DomainRouting
from sb_train.schedules import StepValues
from sb_train.schedules.apply import set_model_schedule, set_optimizer_schedule
from sb_train.setup import build_parts, open_logs
from sb_train.step_report import TrainingAborted, check_loss, final_row, step_max_logit, step_row
from sb_train.stop_signal import StopSignal, any_rank_requested
from sb_train.train_state import Progress, capture_state, restore_state, resume_from

__all__ = ["TrainResult", "Trainer", "TrainingAborted"]


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
    stop_signal: str | None = None  # "SIGTERM" / "SIGINT" when state == "stopped"


class Trainer:
    """``Trainer(cfg, resume=None|"auto"|PATH, env=None, callbacks=[...]).run()`` trains one run.

    From construction until :meth:`run` returns, rank 0 holds the run folder's lock
    (:mod:`sb_train.run_lock`); :meth:`close` drops it without running. ``allow_config_change`` lets a
    resume go on with settings other than the checkpoint's (the CLI's ``--allow-config-change``;
    :mod:`sb_train.config_changes`)."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, env: DistEnv | None = None,
                 callbacks: Iterable[TrainerCallback] = (), allow_config_change: bool = False) -> None:
        self.parts = parts = build_parts(cfg, resume=resume, env=env)
        self.cfg, self.env, self.device = cfg, parts.env, parts.device
        self.model, self.forward, self.opt = parts.model, parts.forward, parts.opt
        self.run_dir, self.run_id = parts.run_dir, parts.run_id
        self.callbacks = list(callbacks)
        self.progress = Progress()
        try:
            if parts.resume_from is not None:
                self.progress = resume_from(parts, parts.resume_from, allow_config_change=allow_config_change)
            self.start_step = self.progress.step_done + 1
            resumed_step = self.progress.step_done if parts.resume_from is not None else None
            self.domains = DomainRouting.from_parts(parts)  # domains.csv (docs/log-format.md §5), or None
            self.logger, self.printer = open_logs(parts, resumed_step=resumed_step)
        except BaseException:
            self.close()
            raise
        self._live_experts: int | None = None  # the count the adapters were last initialised for
        self._frozen_stack: tuple[bool, int] | None = None  # (frozen, id of the head weight) last applied
        self._pending_val: dict[str, float] = {}
        self._pending_domains: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------ schedule
    def apply_schedule(self, step: int, evaluation: bool = False) -> StepValues:
        """Hand the schedule values of ``step`` to the model (tensors, head untying) and, for training, to
        the optimizer's groups."""
        mcfg, model = self.cfg.model, self.model
        v = self.cfg.schedule.at(step, num_experts=mcfg.bank.num_experts,
                                 max_window_tokens=mcfg.max_window_tokens, block_size=mcfg.block_size,
                                 evaluation=evaluation)
        set_model_schedule(model, v)
        if model.bank is not None and v.active_experts != self._live_experts:
            model.bank.maybe_init_adapters(model.routing_schedule.active_mask)  # lazy, when experts go live
            self._live_experts = v.active_experts
        if not evaluation:
            self.progress.routing = {"temperature": v.temperature, "logit_cap": v.logit_cap,
                                     "active_experts": v.active_experts, "window_blocks": v.window_blocks}
            set_optimizer_schedule(self.opt, v)
        return v

    def _freeze_block_stack(self, frozen: bool) -> None:
        """The shared-FFN freeze (docs/design/schedules.md, freezes): every parameter but the LM head's stops
        taking gradients, so the block stack (attention, bank, routers, scalars, embeddings) stays fixed.
        With a tied head the embedding is the head and keeps training."""
        head = self.model.head_weight
        key = (frozen, id(head))
        if key == self._frozen_stack:
            return
        for p in self.model.parameters():
            p.requires_grad_(not frozen or p is head)
        self._frozen_stack = key

    # ------------------------------------------------------------------------------------------ warm-up
    def compile_warmup(self) -> None:
        """``run.warmup_steps`` untimed training steps (half in the single-expert phase, half with every
        expert live) and one evaluation forward, so that compilation happens before the clock starts;
        then every state (model, optimizer, data position, RNG, clip, statistics) is put back
        (docs/design/training.md, warm-up)."""
        k = self.cfg.run.warmup_steps
        if k <= 0:
            return
        saved = copy.deepcopy(capture_state(self.parts, self.progress))
        saved_routing = dict(self.progress.routing)
        all_live = max((s for s, _ in self.cfg.schedule.expert_activation_schedule), default=0)
        t = time.perf_counter()
        for i in range(k):
            step = self.start_step if i < k // 2 else max(all_live, self.start_step)
            self.train_step(step, self.apply_schedule(step))
        loader = next(iter(self.parts.val_loaders.values()), None)
        if loader is not None:
            self.model.eval()
            inputs, targets = next(iter(loader))
            with torch.no_grad(), self._autocast():
                self.forward(inputs[None], targets[None])
            self.model.train()
        self.opt.zero_grad(set_to_none=True)
        restore_state(self.parts, *saved)
        self.progress.routing = saved_routing
        self._live_experts = None
        if self.env.is_main:
            took = time.perf_counter() - t
            print(f"[sb-train] warm-up: {k} untimed steps in {took:.1f} s (states restored)", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, step: int, budget: str) -> float | None:
        loader = self.parts.val_loaders.get(budget)
        if loader is None:
            return None
        self.model.eval()
        self.apply_schedule(step, evaluation=True)
        total = torch.zeros((), device=self.device)
        n = 0
        for inputs, targets in loader:
            with self._autocast():
                out = self.forward(inputs[None], targets[None])
            total += out.ce_loss.float()
            n += 1
        total /= max(n, 1)
        if self.domains is not None:
            self._pending_domains = self.domains.measure(self.model, step, self._autocast)
        if self.env.distributed:  # SUM then divide: gloo has no AVG
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= self.env.world_size
        self.model.train()
        self.apply_schedule(step)
        loss = float(total)
        if not math.isfinite(loss):
            raise TrainingAborted(f"non-finite validation loss ({loss}) at step {step}")
        done = self.progress
        done.val_history.append((step, loss))
        if done.best_val is None or loss < done.best_val[0]:
            done.best_val = (loss, step)
        self._pending_val = {"val_loss": loss, "val_tokens": loader.num_tokens}
        self.printer.validation(step, loss, done.time_ms)
        return loss

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.parts.plan.autocast()  # the device plan's (sb_train.device_plan)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int, values: StepValues) -> dict[str, torch.Tensor]:
        parts = self.parts
        accum = self.cfg.data.grad_accum_steps
        self._freeze_block_stack(values.ffn_frozen)  # here, not in apply_schedule: only steps that train
        self.opt.zero_grad(set_to_none=True)
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        bank = self.model.bank
        before = bank.metrics.max_logit_totals() if bank is not None else None
        for _ in range(accum):
            inputs, targets = next(parts.loader)
            with self._autocast():
                out = self.forward(inputs[None], targets[None])
            (out.loss / accum).backward()
            ce_sum += out.ce_loss.detach().float()
            aux_sum += out.aux_loss.detach().float()
        parts.reducer.launch()
        parts.reducer.finish()
        clip = None
        if values.active_experts <= 1:
            # one live expert: the bank routes deterministically and the routers get only zero gradients;
            # drop them so that Adam does not count the step and AutoClip does not record a zero norm
            for p in parts.router_params:
                p.grad = None
        elif parts.router_params and any(p.grad is not None for p in parts.router_params):
            clip = parts.router_clip.clip_(parts.router_params)
        self.opt.step()
        result = {"loss_main": ce_sum / accum, "loss_aux": aux_sum / accum}
        if clip is not None:
            result.update(router_grad_norm=clip.norm, router_clip=clip.clip, router_clipped=clip.clipped)
        if before is not None:
            max_logit = step_max_logit(bank, before)
            result["step_max_logit"] = max_logit
            parts.logit_stats.update(max_logit, values.logit_cap)
        return result

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, env, done = self.cfg, self.env, self.progress
        stop_step, n_steps = self.parts.stop_step, cfg.schedule.num_iterations
        result = TrainResult(self.run_dir, self.run_id, "finished", self.start_step, time_ms=done.time_ms)
        state = "running"
        try:
            with StopSignal() as stop:
                self.model.train()
                self.compile_warmup()
                if self.start_step == 0 and cfg.run.validate_at_start:
                    self.apply_schedule(0)
                    self.validate(0, "intermediate")
                self.logger.write_status("running", max(done.step_done, 0), done.time_ms)
                for callback in self.callbacks:
                    callback.on_train_start(self)
                barrier()
                t0 = time.perf_counter()
                if self.start_step > stop_step:
                    state = "finished"
                    if env.is_main:
                        print("[sb-train] the checkpoint is the end of the run: nothing left to train",
                              file=sys.stderr)
                for step in range(self.start_step, n_steps + 1):
                    final, last = step == n_steps, step == stop_step
                    values = self.apply_schedule(step)
                    every = cfg.run.val_loss_every
                    val_loss = None
                    if last or (step > 0 and every > 0 and step % every == 0):
                        done.time_ms += _elapsed_ms(t0, self.device)
                        val_loss = self.validate(step, "final" if final else "intermediate")
                        t0 = time.perf_counter()
                    ckpt_every = cfg.run.checkpoint_every
                    if last or (ckpt_every and step > self.start_step and step % ckpt_every == 0):
                        # untimed; holds the state after step - 1 and the validation measured on it
                        done.time_ms += _elapsed_ms(t0, self.device)
                        if not last or cfg.run.save_final:
                            self.save_checkpoint(step - 1, val_loss=val_loss)
                        t0 = time.perf_counter()
                    if last:
                        self._log(step, final_row(step, done.time_ms, self.parts.tokens_per_step))
                        state = "finished"
                        break
                    out = self.train_step(step, values)
                    done.step_done = step
                    for callback in self.callbacks:
                        callback.on_step_end(self, step)
                    before_ckpt = bool(ckpt_every) and (step + 1) % ckpt_every == 0
                    log_now = step % cfg.run.log_every == 0 or step == stop_step - 1 or before_ckpt
                    router_now = step % cfg.run.router_log_every == 0 or step == stop_step - 1
                    if log_now or router_now:
                        now_ms = done.time_ms + _elapsed_ms(t0, self.device)
                        loss = self._log_step(step, values, out, now_ms, with_router=router_now)
                        result.losses.append((step, loss))
                    if (step + 1) % cfg.run.stop_check_every == 0 and any_rank_requested(stop.requested):
                        done.time_ms += _elapsed_ms(t0, self.device)
                        check_loss(step, out)
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
            self.logger.write_status("failed", max(done.step_done, 0), done.time_ms, error=repr(exc))
            self.logger.close("failed")
            self.close()
            raise
        try:
            result.stop_signal = stop.signal_name if state == "stopped" else None
            self._finish(result, state)
            for callback in self.callbacks:
                callback.on_train_end(self, result.state)
        finally:
            self.close()
        return result

    def close(self) -> None:
        """Drop the run folder's lock (the end of :meth:`run` does it; a second call does nothing)."""
        if self.parts.run_lock is not None:
            self.parts.run_lock.release()

    def _finish(self, result: TrainResult, state: str) -> None:
        """Fill in the result; write the final status and close the logs."""
        done = self.progress
        result.state = state if state in ("finished", "stopped") else "aborted"
        result.step = done.step_done
        result.time_ms = done.time_ms
        result.val_history = list(done.val_history)
        final_val = done.val_history[-1][1] if state == "finished" and done.val_history else None
        result.final_val_loss = final_val
        result.best_val_loss = done.best_val[0] if done.best_val else None
        extra = {
            "final_val_loss": final_val,
            "best_val_loss": result.best_val_loss,
            "best_val_step": done.best_val[1] if done.best_val else None,
            "abort_reason": result.abort_reason,
            **{k: (v if math.isfinite(v) else None) for k, v in self.parts.logit_stats.summary().items()},
        }
        status = {"finished": "finished", "stopped": "aborted", "aborted": "aborted"}[result.state]
        self.logger.write_status(status, max(done.step_done, 0), done.time_ms, **extra)
        self.logger.close(status)
        if self.env.is_main:
            self.printer.finish(result.state, final_val, done.time_ms)

    # ------------------------------------------------------------------------------------------ logging
    def _log_step(self, step: int, values: StepValues, out: dict[str, torch.Tensor], now_ms: float,
                  with_router: bool) -> float:
        """Check the step's numbers (one host copy), reduce the router metrics when due, write the row."""
        host = check_loss(step, out)
        self.parts.reducer.check()
        report = None
        bank = self.model.bank
        if with_router and bank is not None:
            if self.env.distributed:
                for buf in bank.metrics.buffers():
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            report = bank.read_metrics()
        row = step_row(step, values, host, now_ms, self.parts, report)
        self._log(step, row, report, tokens_per_layer=self.parts.tokens_per_step)
        if step % 50 == 0:
            self.logger.write_status("running", step, now_ms)
        loss = host["loss_main"] + host["loss_aux"]
        self.printer.update(step, loss, now_ms, report.summary if report is not None else None)
        return loss

    def _log(self, step: int, row: dict[str, Any], report: RoutingReport | None = None,
             tokens_per_layer: int | None = None) -> None:
        row.update(self._pending_val)  # a validation measured at the top of this step
        self._pending_val = {}
        domain_rows, self._pending_domains = self._pending_domains, []
        self.logger.log_step(step, row, report, tokens_per_layer=tokens_per_layer, domain_rows=domain_rows)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, val_loss: float | None = None) -> Path:
        """Save the state after the update of ``step`` (collective: every rank calls it)."""
        self.progress.step_done = step
        shared, per_rank = capture_state(self.parts, self.progress)
        return self.parts.checkpoints.save(step, shared, per_rank, val_loss=val_loss)


def _elapsed_ms(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1000.0
