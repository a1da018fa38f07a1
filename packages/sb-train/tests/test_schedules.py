"""sb_train.schedules against the values printed in docs/design/schedules.md and docs/design/model.md
(attention window) and against plain transcriptions of the documented formulas."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sb_train.schedules import (
    RECORD_EXPERT_ACTIVATION_SCHEDULE,
    RECORD_GUMBEL_SCHEDULE,
    ScheduleConfig,
    StepValues,
    active_expert_count,
    attention_window_blocks,
    lr_multiplier,
    rampdown_multiplier,
)

RECORD = ScheduleConfig()
N = 1750
STEPS = [0, 1, 50, 74, 75, 76, 100, 141, 150, 200, 250, 280, 299, 300, 311, 312, 359, 441, 500, 612, 613, 875,
         1000, 1200, 1500, 1749, 1750]


def at(step: int, cfg: ScheduleConfig = RECORD, **kw) -> StepValues:
    return cfg.at(step, num_experts=8, **kw)


# ---- plain transcriptions of the documented formulas ------------------------------------------------------


def formula_lr(step, n=N, c=0.65, final=0.0, freeze=0):
    s = min(step, n - freeze)
    x = min(max(s / n, 0.0), 1.0)
    if x < 1 - c:
        return 1.0
    t = min(max((x - (1 - c)) / c, 0.0), 1.0)
    return 1 - t * (1 - final)


def formula_window(step, n=N, end=0):
    s, nn = (min(step, end), min(n, end)) if end > 0 else (step, n)
    x = s / nn
    f = 4 * x**3 - 6 * x**2 + 3 * x
    tokens = 128
    while tokens < 3456 * f:
        tokens += 128
    return tokens // 128


def formula_temp(step, n=N, t0=1.464, t1=0.93744, da=284, rho=0.49, s0=75):
    if step <= s0:
        return t0
    n2 = max(n - s0, 1)
    progress = (step - s0) / n2
    pa = min(max(da / n2, 1e-6), 0.999999)
    power = math.log(rho) / math.log(1 - pa)
    return t1 + (t0 - t1) * (1 - progress) ** power


def formula_cap(step, c0=1.166, c1=13.757, delta=237, s0=75):
    if step < s0:
        return c0
    frac = min(max((step - s0) / delta, 0.0), 1.0)
    return c0 * math.exp(math.log(c1 / c0) * frac**4)


# ---- LR -----------------------------------------------------------------------------------------------


def test_lr_printed_values():
    for step in range(0, 613):
        assert lr_multiplier(step, N, 0.65) == 1.0
    assert lr_multiplier(613, N, 0.65) == pytest.approx(0.99956, abs=5e-6)
    assert lr_multiplier(875, N, 0.65) == pytest.approx(0.769, abs=5e-4)
    assert lr_multiplier(1000, N, 0.65) == pytest.approx(0.659, abs=5e-4)
    assert lr_multiplier(1500, N, 0.65) == pytest.approx(0.220, abs=5e-4)
    assert lr_multiplier(1749, N, 0.65) == pytest.approx(0.00088, abs=5e-6)
    assert lr_multiplier(1750, N, 0.65) == 0.0


@pytest.mark.parametrize(
    ("c", "final", "freeze"), [(0.65, 0.0, 0), (0.5, 0.1, 0), (0.3, 0.2, 100), (1.0, 0.0, 0)]
)
def test_lr_matches_the_documented_formula(c, final, freeze):
    for step in [*STEPS, 1800]:
        expected = formula_lr(step, N, c, final, freeze)
        assert lr_multiplier(step, N, c, final, freeze) == pytest.approx(expected)


def test_lr_freeze_last_steps_holds_value():
    held = lr_multiplier(1650, N, 0.65, 0.0, 100)
    assert held == pytest.approx(formula_lr(1650))
    assert all(lr_multiplier(s, N, 0.65, 0.0, 100) == held for s in range(1650, 1751))


def test_lr_without_cooldown_stays_one():
    assert all(lr_multiplier(s, N, 0.0) == 1.0 for s in (0, 1000, 1749, 1750))


def test_lr_multiplier_applies_to_every_group():
    v = at(1000)
    for group in ("attn", "muon", "embed", "head", "scalar"):
        assert v.lr_for(group) == v.lr_mult == pytest.approx(formula_lr(1000))


# ---- rampdowns and freezes ----------------------------------------------------------------------------


def test_rampdown_branches():
    assert rampdown_multiplier(0.9, 0.2, -1.0) == 1.0  # end < 0: disabled
    assert rampdown_multiplier(0.5, 0.2, 0.5) == 0.0  # progress >= end
    assert rampdown_multiplier(0.7, 0.2, 0.5) == 0.0
    assert rampdown_multiplier(0.3, -1.0, 0.5) == 1.0  # start < 0: no ramp before end
    assert rampdown_multiplier(0.3, 0.6, 0.5) == 1.0  # start >= end
    assert rampdown_multiplier(0.2, 0.2, 0.5) == 1.0  # progress <= start
    assert rampdown_multiplier(0.35, 0.2, 0.5) == pytest.approx(0.5)
    assert rampdown_multiplier(0.44, 0.2, 0.5) == pytest.approx(0.2)


def test_group_multipliers_record_are_one_during_training():
    for step in range(0, N):
        assert at(step).group_mult == {"router": 1.0, "adapter": 1.0, "shared_ffn": 1.0}
    assert at(N).group_mult == {"router": 0.0, "adapter": 1.0, "shared_ffn": 0.0}


def test_group_multipliers_with_rampdowns():
    cfg = ScheduleConfig(router_lr_reduce_start_frac=0.5, router_freeze_frac=0.9,
                         shared_ffn_lr_reduce_start_frac=0.2, shared_ffn_freeze_frac=0.7)
    v = at(1225, cfg)  # progress 0.7
    assert v.group_mult["router"] == pytest.approx(0.5)
    assert v.group_mult["adapter"] == 1.0
    assert v.group_mult["shared_ffn"] == 0.0
    assert v.lr_for("router") == pytest.approx(v.lr_mult * 0.5)
    tied = at(1225, dataclasses.replace(cfg, router_freeze_adapters=True))
    assert tied.group_mult["adapter"] == tied.group_mult["router"]


def test_freezes_only_at_progress_ge_frac():
    assert not any(at(s).router_frozen or at(s).ffn_frozen for s in range(0, N))
    assert at(N).router_frozen and at(N).ffn_frozen and not at(N).adapters_frozen
    cfg = ScheduleConfig(router_freeze_frac=0.5, shared_ffn_freeze_frac=0.8, router_freeze_adapters=True)
    assert not at(874, cfg).router_frozen and not at(874, cfg).adapters_frozen
    assert at(875, cfg).router_frozen and at(875, cfg).adapters_frozen
    assert not at(1399, cfg).ffn_frozen and at(1400, cfg).ffn_frozen


def test_head_untie_schedule():
    assert at(0).head_untied is False and at(N).head_untied is False  # no untie schedule
    cfg = ScheduleConfig(untie_lm_head_frac=0.3)  # int(0.3 * 1750) = 525
    assert at(524, cfg).head_untied is False and at(525, cfg).head_untied is True


# ---- momentum, window ---------------------------------------------------------------------------------


def test_momentum_warmup():
    for step in STEPS:
        f = min(step / 300, 1)
        assert at(step).momentum == pytest.approx((1 - f) * 0.85 + f * 0.95)
    assert at(0).momentum == pytest.approx(0.85)
    assert at(150).momentum == pytest.approx(0.90)
    assert at(300).momentum == at(1000).momentum == pytest.approx(0.95)
    assert ScheduleConfig(momentum_warmup_steps=0).at(0, num_experts=8).momentum == pytest.approx(0.95)


def test_window_printed_values():
    printed = {0: 1, 50: 3, 100: 5, 200: 8, 300: 10, 600: 14, 1000: 14, 1200: 15, 1400: 17, 1500: 19,
               1600: 22, 1700: 25, 1750: 27}
    for step, blocks in printed.items():
        assert attention_window_blocks(step, N) == blocks
        assert at(step).window_blocks == blocks
    assert all(attention_window_blocks(s, N) == 14 for s in range(600, 1001, 50))


def test_window_matches_the_documented_formula_and_end_step():
    for step in range(0, N + 1, 7):
        assert attention_window_blocks(step, N) == formula_window(step)
        assert attention_window_blocks(step, 3500, end_step=1750) == formula_window(step, 3500, 1750)
    assert attention_window_blocks(3000, 3500, end_step=1750) == 27


@pytest.mark.parametrize("tokens", [0, -128])
def test_window_of_zero_or_fewer_tokens_is_refused_not_clamped(tokens):
    with pytest.raises(ValueError, match="max_window_tokens >= 1"):
        attention_window_blocks(10, 100, max_window_tokens=tokens)
    assert ScheduleConfig(num_iterations=3500, window_schedule_end_step=1750).at(
        2000, num_experts=8).window_blocks == 27


# ---- router schedules ---------------------------------------------------------------------------------


def test_temperature_printed_values():
    for step in range(0, 76):
        assert at(step).temperature == pytest.approx(1.464)
    printed = {100: (1.4345, 5e-5), 200: (1.3284, 5e-5), 359: (1.1955, 5e-5), 500: (1.1086, 5e-5),
               1000: (0.9615, 5e-5), 1500: (0.9378, 5e-5), 1750: (0.93744, 5e-6)}
    for step, (value, tol) in printed.items():
        assert at(step).temperature == pytest.approx(value, abs=tol)


def test_temperature_matches_the_documented_formula():
    for step in STEPS:
        assert at(step).temperature == pytest.approx(formula_temp(step), rel=1e-12)


def test_temperature_schedule_end_step_holds_final():
    cfg = ScheduleConfig(num_iterations=3500, router_temp_schedule_end_step=1750)
    assert cfg.at(1750, num_experts=8).temperature == pytest.approx(0.93744)
    assert cfg.at(3000, num_experts=8).temperature == pytest.approx(0.93744)


def test_logit_cap_printed_values():
    for step in range(0, 76):
        assert at(step).logit_cap == pytest.approx(1.166)
    printed = {150: 1.1952, 200: 1.4114, 250: 2.4284, 280: 4.6419, 300: 8.6573}
    for step, value in printed.items():
        assert at(step).logit_cap == pytest.approx(value, abs=5e-5)
    for step in (312, 500, 1750):
        assert at(step).logit_cap == pytest.approx(13.757)
    for step in STEPS:
        assert at(step).logit_cap == pytest.approx(formula_cap(step), rel=1e-12)


def test_logit_cap_disabled():
    assert ScheduleConfig(router_logit_cap_initial=0.0, router_logit_cap_final=0.0).at(
        500, num_experts=8).logit_cap == 0.0
    no_ramp = ScheduleConfig(router_logit_cap_delta_steps=0)
    assert no_ramp.at(0, num_experts=8).logit_cap == pytest.approx(13.757)


def test_anchor_reads_sorted_schedule():
    shuffled = tuple(reversed(RECORD_EXPERT_ACTIVATION_SCHEDULE))
    cfg = ScheduleConfig(expert_activation_schedule=shuffled)
    for step in STEPS:
        assert at(step, cfg) == at(step)


def test_gumbel_windows_half_open():
    for start, end in RECORD_GUMBEL_SCHEDULE:
        assert not at(start - 1).gumbel or any(s <= start - 1 < e for s, e in RECORD_GUMBEL_SCHEDULE)
        assert at(start).gumbel and at(end - 1).gumbel
        assert not at(end).gumbel
    assert not at(0).gumbel and not at(1600).gumbel
    for step in range(0, N):
        assert at(step).gumbel == any(s <= step < e for s, e in RECORD_GUMBEL_SCHEDULE)


def test_gumbel_open_ended_window_and_switch():
    cfg = ScheduleConfig(router_gumbel_schedule=((100, -1),))
    assert not at(99, cfg).gumbel and at(100, cfg).gumbel and at(1749, cfg).gumbel
    assert not at(1750, cfg).gumbel  # end < 0 means N, half-open
    assert not at(100, dataclasses.replace(cfg, router_use_gumbel=False)).gumbel


def test_evaluation_turns_gumbel_off():
    assert at(100).gumbel
    ev = at(100, evaluation=True)
    assert not ev.gumbel
    assert dataclasses.replace(ev, gumbel=True) == at(100)  # everything else is the training value
    assert ScheduleConfig(gumbel_in_eval=True).at(100, num_experts=8, evaluation=True).gumbel


def test_active_experts_per_stage():
    stages = dict(RECORD_EXPERT_ACTIVATION_SCHEDULE)
    for stage_step, count in stages.items():
        assert at(stage_step).active_experts == count
        if stage_step > 0:
            assert at(stage_step - 1).active_experts == count - 1
    for step in range(0, N, 13):
        assert at(step).active_experts == active_expert_count(step, RECORD_EXPERT_ACTIVATION_SCHEDULE, 8)
    # the record's schedule turns on 8 experts: a 4-expert bank is refused, not clamped to 4
    with pytest.raises(ValueError, match=r"\(338, 5\): counts must be in \[1, 4\]"):
        RECORD.at(0, num_experts=4)
    assert ScheduleConfig(expert_activation_schedule=()).at(0, num_experts=8).active_experts == 8


# ---- config validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_iterations", 0),
        ("num_iterations", 1.5),
        ("cooldown_frac", 1.5),
        ("cooldown_frac", -0.1),
        ("cooldown_frac", float("nan")),
        ("lr_final_mult", -1.0),
        ("lr_freeze_last_steps", 2000),
        ("muon_momentum", 1.0),
        ("momentum_warmup_steps", -1),
        ("expert_activation_schedule", ((0, 1), (75, 0))),
        ("expert_activation_schedule", ((0, 1), (75,))),
        ("expert_activation_schedule", ((0, 1.5),)),
        ("expert_activation_schedule", "0,1"),
        ("router_temp_init", 0.0),
        ("router_temp_anchor_ratio", 1.0),
        ("router_gumbel_schedule", ((100, 50),)),
        ("router_gumbel_schedule", ((100, 100),)),
        ("router_use_gumbel", 1),
        ("router_freeze_frac", -0.5),
        ("window_schedule_end_step", -1),
    ],
)
def test_bad_fields_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ScheduleConfig(**{field: value})


def test_coercion_of_plain_types():
    cfg = ScheduleConfig(cooldown_frac=1, expert_activation_schedule=[[0, 1], [10, 8]],
                         router_gumbel_schedule=[[5, -1]])
    assert isinstance(cfg.cooldown_frac, float)
    assert cfg.expert_activation_schedule == ((0, 1), (10, 8))
    assert cfg.router_gumbel_schedule == ((5, -1),)
    hash(cfg)  # stays hashable (tuples only)


def test_record_defaults():
    assert RECORD.num_iterations == 1750 and RECORD.cooldown_frac == 0.65
    assert RECORD.router_temp_anchor_delta_steps == 284 and RECORD.router_logit_cap_delta_steps == 237
    assert RECORD.router_freeze_frac == 1.0 and RECORD.untie_lm_head_frac == -1.0
    for f in dataclasses.fields(ScheduleConfig):
        assert isinstance(f.default, bool | int | float | tuple), f.name


def test_head_preset_values():
    """HEAD's preset (docs/design/presets.md): anchor 100, power 2.7417, temperature held from 1750,
    overlapping Gumbel windows that keep the noise on over [100, 3225)."""
    head = ScheduleConfig(
        num_iterations=3500,
        window_schedule_end_step=1750,
        expert_activation_schedule=(
            (0, 1), (100, 2), (187, 3), (312, 4), (450, 5), (587, 6), (787, 7), (925, 8)
        ),
        router_temp_anchor_delta_steps=378,
        router_temp_schedule_end_step=1750,
        router_logit_cap_delta_steps=316,
        router_gumbel_schedule=(
            (100, 1175), (612, 1300), (712, 1925), (1200, 2425), (1337, 2725), (1462, 2950), (1600, 3225)
        ),
    )
    power = math.log(0.49) / math.log(1 - 378 / 1650)
    assert power == pytest.approx(2.7417, abs=5e-5)
    v = head.at(478, num_experts=8)  # anchor + Δa: (1 - progress)^power = ρ
    assert v.temperature == pytest.approx(0.93744 + (1.464 - 0.93744) * 0.49)
    assert head.at(2500, num_experts=8).temperature == pytest.approx(0.93744)
    assert head.at(99, num_experts=8).logit_cap == pytest.approx(1.166)
    assert head.at(416, num_experts=8).logit_cap == pytest.approx(13.757)
    assert all(head.at(s, num_experts=8).gumbel for s in range(100, 3225, 25))
    assert not head.at(99, num_experts=8).gumbel and not head.at(3225, num_experts=8).gumbel
    assert head.at(1750, num_experts=8).window_blocks == 27 == head.at(3499, num_experts=8).window_blocks
