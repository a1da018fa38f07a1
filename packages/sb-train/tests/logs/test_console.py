"""Progress and validation lines, the router-health word and the printer's rate limiting."""

from __future__ import annotations

import io

import pytest

from sb_train.logs.console import (
    ProgressPrinter,
    format_duration,
    format_progress,
    format_rate,
    format_validation,
    router_health,
)

HEALTHY = {
    "router/top1_p_mean": 0.41,
    "router/max_frac_max": 0.33,
    "router/active_min": 6.0,
    "router/live_experts": 8.0,
}


def test_progress_line():
    line = format_progress(120, 1750, 3.4123, 98_300.0, 760.0, HEALTHY, num_experts=8)
    assert line == (
        "step 120/1750 (6.9%) loss 3.412 | 98.3k tok/s | ETA 12m40s | "
        "router: top1_p 0.41 max_frac 0.33 active_min 6/8 [ok]"
    )
    assert format_progress(0, 10, None, None, None) == "step 0/10 (0.0%) loss - | ? tok/s | ETA ?"


def test_router_health_words():
    assert router_health(HEALTHY) == "ok"
    assert router_health({**HEALTHY, "router/max_frac_max": 0.6}) == "imbalanced"
    assert router_health({**HEALTHY, "router/max_frac_max": 0.95}) == "collapsed"
    assert router_health({**HEALTHY, "router/active_min": 1.0}) == "collapsed"
    assert router_health({**HEALTHY, "router/live_experts": 1.0, "router/active_min": 1.0}) == "1 expert live"
    assert router_health({"max_frac": 0.7}) == "imbalanced"  # plain keys work too
    assert router_health({"router/max_frac_max": float("nan")}) is None
    assert "[1 expert live]" in format_progress(5, 10, 3.0, 1.0, 1.0, {"router/live_experts": 1.0})


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (45, "45s"), (760, "12m40s"), (7500, "2h05m"), (None, "?"), (-1, "?")]
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_rates():
    assert format_rate(980.4) == "980 tok/s"
    assert format_rate(98_300) == "98.3k tok/s"
    assert format_rate(1_234_000) == "1.23M tok/s"


def test_validation_line_matches_reference_format():
    assert format_validation(250, 1750, 3.9123454, 117_500.4) == (
        "step:250/1750 val_loss:3.912345 train_time:117500ms step_avg:470.00ms"
    )
    assert format_validation(0, 1750, 10.8, 0.0).endswith("step_avg:0.00ms")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_printer_rate_limits_by_steps_and_seconds():
    clock, out = FakeClock(), io.StringIO()
    printer = ProgressPrinter(100, 1000, every=10, every_s=5.0, stream=out, clock=clock)
    printed = []
    for step in range(100):
        clock.now += 0.1  # fast steps: the step interval decides
        if printer.update(step, 3.0, 100.0 * (step + 1)) is not None:
            printed.append(step)
    assert printed == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]  # the last step is always printed
    assert out.getvalue().count("\n") == len(printed)

    printer = ProgressPrinter(100, 1000, every=10, every_s=5.0, stream=io.StringIO(), clock=clock)
    printed = []
    for step in range(8):
        clock.now += 2.0  # slow steps: the time interval decides
        if printer.update(step, 3.0, 2000.0 * (step + 1)):
            printed.append(step)
    assert printed == [0, 3, 6]


def test_printer_eta_and_rate_from_step_time_ema():
    clock = FakeClock()
    printer = ProgressPrinter(1000, 5000, every=1, stream=io.StringIO(), clock=clock, ema_weight=0.5)
    line = printer.update(9, 3.0, 1000.0)  # first call: 10 steps in 1 s -> 0.1 s/step
    assert printer.step_time_s == pytest.approx(0.1)
    assert printer.tokens_per_s() == pytest.approx(50_000)
    assert printer.eta_s(9) == pytest.approx(99.0)
    assert line.startswith("step 10/1000 (1.0%) loss 3.000 | 50.0k tok/s | ETA 1m39s")
    printer.update(10, 3.0, 1300.0)  # one step of 0.3 s, EMA weight 0.5
    assert printer.step_time_s == pytest.approx(0.2)
    printer.update(12, 3.0, 1700.0)  # two steps of 0.2 s each
    assert printer.step_time_s == pytest.approx(0.2)
    printer.update(13, 2.9, 1900.0, router=HEALTHY)
    assert printer.router == HEALTHY  # kept for later lines without a report
    assert "[ok]" in printer.update(14, 2.9, 2100.0)


def test_printer_validation_and_disabled_ranks():
    out = io.StringIO()
    printer = ProgressPrinter(1750, 1, stream=out)
    printer.validation(250, 3.5, 117_500.0)
    assert out.getvalue() == "step:250/1750 val_loss:3.500000 train_time:117500ms step_avg:470.00ms\n"
    quiet_out = io.StringIO()
    quiet = ProgressPrinter(10, 1, stream=quiet_out, enabled=False)
    assert quiet.update(0, 3.0, 1.0) is None and quiet.validation(0, 3.0, 0.0) is None
    assert quiet.finish("finished", 3.0, 1.0) is None
    assert quiet_out.getvalue() == ""
    with pytest.raises(ValueError, match="every must be"):
        ProgressPrinter(10, 1, every=0)


def test_printer_without_tokens_per_step_and_final_line():
    out = io.StringIO()
    printer = ProgressPrinter(total=4, every=1, stream=out)
    assert "? tok/s" in printer.update(0, 3.0, 500.0)
    assert printer.finish("finished", 2.912345, 830_000.0) == (
        "run finished: train_time:830000ms (13.8 min) val_loss:2.912345"
    )
    assert printer.finish("aborted") == "run aborted:"
