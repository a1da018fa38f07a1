"""Console output of rank 0: a rate-limited progress line with a router-health word, and validation lines.

Progress line (completed steps, so ``step`` index 119 shows as 120, as the reference's per-step line does)::

    step 120/1750 (6.9%) loss 3.412 | 98.3k tok/s | ETA 12m40s | router: top1_p 0.41 max_frac 0.33 \
        active_min 6/8 [ok]

(one line; broken here only to fit the page).

Validation line, the reference's format (docs/design/training.md), printed every time::

    step:250/1750 val_loss:3.912345 train_time:117500ms step_avg:470.00ms

The router part reads a :class:`sb_model.bank.metrics.RoutingReport` summary (``router/top1_p_mean``,
``router/max_frac_max``, ``router/active_min``, ``router/live_experts``; plain keys without ``router/`` work
too). The health word applies the router-health thresholds of sb_runlog.health_thresholds
(docs/log-format.md §7) to the worst layer: ``collapsed`` by the collapse rule (busiest expert >= 90% or at
most one expert active), ``imbalanced`` when the busiest expert takes more than the severe-imbalance share
(50%), else ``ok``; while the expert schedule keeps a single expert live (the planned start of a run) it says
``1 expert live`` instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from sb_runlog.health_thresholds import SEVERE_IMBALANCE_MAX_FRAC, is_collapsed


def _get(router: Mapping[str, float], key: str) -> float | None:
    """``router/<key>`` or ``<key>`` from a summary, None when absent or NaN."""
    value = router.get(f"router/{key}", router.get(key))
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def format_duration(seconds: float | None) -> str:
    """``45s``, ``12m40s``, ``2h05m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def format_rate(tokens_per_s: float | None) -> str:
    """``980 tok/s``, ``98.3k tok/s``, ``1.23M tok/s``."""
    if tokens_per_s is None or not math.isfinite(tokens_per_s):
        return "? tok/s"
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M tok/s"
    if tokens_per_s >= 1e3:
        return f"{tokens_per_s / 1e3:.1f}k tok/s"
    return f"{tokens_per_s:.0f} tok/s"


def router_health(router: Mapping[str, float]) -> str | None:
    """``collapsed`` / ``imbalanced`` / ``ok`` / ``1 expert live`` from a router summary (None: no data)."""
    max_frac = _get(router, "max_frac_max")
    if max_frac is None:
        max_frac = _get(router, "max_frac")
    active = _get(router, "active_min")
    live = _get(router, "live_experts")
    if live is not None and live <= 1:
        return "1 expert live"
    if max_frac is None and active is None:
        return None
    if is_collapsed(max_frac, active):
        return "collapsed"
    if max_frac is not None and max_frac > SEVERE_IMBALANCE_MAX_FRAC:
        return "imbalanced"
    return "ok"


def format_router(router: Mapping[str, float], num_experts: int | None = None) -> str:
    """``router: top1_p 0.41 max_frac 0.33 active_min 6/8 [ok]`` (absent values are left out)."""
    parts = ["router:"]
    top1 = _get(router, "top1_p_mean")
    if top1 is not None:
        parts.append(f"top1_p {top1:.2f}")
    max_frac = _get(router, "max_frac_max")
    if max_frac is None:
        max_frac = _get(router, "max_frac")
    if max_frac is not None:
        parts.append(f"max_frac {max_frac:.2f}")
    active = _get(router, "active_min")
    if active is not None:
        parts.append(f"active_min {active:.0f}" + (f"/{num_experts}" if num_experts else ""))
    health = router_health(router)
    if health is not None:
        parts.append(f"[{health}]")
    return " ".join(parts)


def format_progress(
    step: int,
    total: int,
    loss: float | None,
    tokens_per_s: float | None,
    eta_s: float | None,
    router: Mapping[str, float] | None = None,
    *,
    num_experts: int | None = None,
) -> str:
    """One progress line; ``step`` is the number of completed steps (shown as ``step/total``)."""
    pct = 100.0 * step / total if total > 0 else 0.0
    loss_text = "-" if loss is None else f"{loss:.3f}"
    parts = [
        f"step {step}/{total} ({pct:.1f}%) loss {loss_text}",
        format_rate(tokens_per_s),
        f"ETA {format_duration(eta_s)}",
    ]
    if router:
        parts.append(format_router(router, num_experts))
    return " | ".join(parts)


def format_validation(step: int, total: int, val_loss: float, train_time_ms: float) -> str:
    """The reference's validation line (docs/design/training.md):
    ``step:{s}/{N} val_loss:… train_time:…ms step_avg:…ms``."""
    return (
        f"step:{step}/{total} val_loss:{val_loss:.6f} train_time:{train_time_ms:.0f}ms "
        f"step_avg:{train_time_ms / max(step, 1):.2f}ms"
    )


class ProgressPrinter:
    """Prints a progress line every ``every`` steps or every ``every_s`` seconds, whichever comes first.

    Call :meth:`update` after every training step with the cumulative *training* time (the trainer's
    ``time_ms``, which excludes validation and compile); the step time is an EMA of its increments, so a
    validation pause does not distort the ETA, and tokens/s is ``tokens_per_step`` over that step time (left
    out when ``tokens_per_step`` is None). The clock only decides when to print (inject one in tests). The
    last training step (index ``total - 1``) is always printed. ``enabled=False`` (ranks other than 0)
    prints nothing.
    """

    def __init__(
        self,
        total: int,
        tokens_per_step: int | None = None,
        *,
        every: int = 50,
        every_s: float = 30.0,
        num_experts: int | None = None,
        ema_weight: float = 0.1,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        if every < 1 or every_s <= 0:
            raise ValueError(f"every must be >= 1 and every_s > 0 (got {every}, {every_s})")
        if not 0 < ema_weight <= 1:
            raise ValueError(f"ema_weight must be in (0, 1] (got {ema_weight})")
        self.total = total
        self.tokens_per_step = tokens_per_step
        self.every = every
        self.every_s = every_s
        self.num_experts = num_experts
        self.ema_weight = ema_weight
        self.stream = stream
        self.clock = clock
        self.enabled = enabled
        self.step_time_s: float | None = None  # EMA of seconds per step
        self.router: Mapping[str, float] | None = None  # last router summary seen
        self._last_step: int | None = None
        self._last_time_ms: float | None = None
        self._printed_step: int | None = None
        self._printed_at: float | None = None

    def _observe(self, step: int, time_ms: float) -> None:
        if self._last_step is None or self._last_time_ms is None:
            steps, elapsed_ms = step + 1, time_ms  # first call (also after a resume): the average so far
        else:
            steps, elapsed_ms = step - self._last_step, time_ms - self._last_time_ms
        self._last_step, self._last_time_ms = step, time_ms
        if steps <= 0 or elapsed_ms < 0:
            return
        per_step = elapsed_ms / 1000.0 / steps
        if self.step_time_s is None:
            self.step_time_s = per_step
        else:
            keep = (1.0 - self.ema_weight) ** steps
            self.step_time_s = keep * self.step_time_s + (1.0 - keep) * per_step

    def eta_s(self, step: int) -> float | None:
        """Seconds of training left after step index ``step``, from the step-time EMA."""
        if self.step_time_s is None:
            return None
        return max(self.total - (step + 1), 0) * self.step_time_s

    def tokens_per_s(self) -> float | None:
        if not self.step_time_s or self.tokens_per_step is None:
            return None
        return self.tokens_per_step / self.step_time_s

    def update(
        self,
        step: int,
        loss: float | None,
        time_ms: float,
        router: Mapping[str, float] | None = None,
    ) -> str | None:
        """Record step index ``step`` (done at cumulative training time ``time_ms``); print and return the
        line when one is due, else return None. ``router``: a RoutingReport summary, kept for later lines."""
        if not self.enabled:
            return None
        self._observe(step, time_ms)
        if router:
            self.router = router
        now = self.clock()
        due = (
            self._printed_step is None
            or step - self._printed_step >= self.every
            or (self._printed_at is not None and now - self._printed_at >= self.every_s)
            or step >= self.total - 1
        )
        if not due:
            return None
        self._printed_step, self._printed_at = step, now
        line = format_progress(
            step + 1,
            self.total,
            loss,
            self.tokens_per_s(),
            self.eta_s(step),
            self.router,
            num_experts=self.num_experts,
        )
        self._print(line)
        return line

    def validation(self, step: int, val_loss: float, train_time_ms: float) -> str | None:
        """Print the reference's validation line (always, on an enabled printer)."""
        if not self.enabled:
            return None
        line = format_validation(step, self.total, val_loss, train_time_ms)
        self._print(line)
        return line

    def finish(
        self, state: str, final_val_loss: float | None = None, time_ms: float | None = None
    ) -> str | None:
        """Print the last line, e.g. ``run finished: train_time:830000ms (13.8 min) val_loss:2.912345``."""
        if not self.enabled:
            return None
        parts = [f"run {state}:"]
        if time_ms is not None:
            parts.append(f"train_time:{time_ms:.0f}ms ({time_ms / 60000:.1f} min)")
        if final_val_loss is not None:
            parts.append(f"val_loss:{final_val_loss:.6f}")
        line = " ".join(parts)
        self._print(line)
        return line

    def _print(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        print(line, file=stream, flush=True)
