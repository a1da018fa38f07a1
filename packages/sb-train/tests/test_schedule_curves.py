"""The step -> value curves of sb_train.schedules.curves against the record values printed in
docs/design/schedules.md (router temperature and cap, expert activation, Gumbel windows)."""

import pytest

from sb_train.schedules import curves

RECORD_ACTIVATION = ((0, 1), (75, 2), (141, 3), (234, 4), (338, 5), (441, 6), (591, 7), (695, 8))


@pytest.mark.parametrize(
    "step,temp",
    [
        (0, 1.464),
        (75, 1.464),
        (100, 1.4345),
        (200, 1.3284),
        (359, 1.1955),
        (500, 1.1086),
        (1000, 0.9615),
        (1500, 0.9378),
        (1750, 0.93744),
    ],
)
def test_record_temperature(step, temp):
    got = curves.router_temperature(
        step,
        1750,
        1.464,
        0.93744,
        anchor_delta_steps=284,
        anchor_ratio=0.49,
        start_step=curves.second_expert_step(RECORD_ACTIVATION),
    )
    assert got == pytest.approx(temp, abs=1e-4)


@pytest.mark.parametrize(
    "step,cap",
    [
        (0, 1.166),
        (75, 1.166),
        (150, 1.1952),
        (200, 1.4114),
        (250, 2.4284),
        (280, 4.6419),
        (300, 8.6573),
        (312, 13.757),
        (1000, 13.757),
    ],
)
def test_record_logit_cap(step, cap):
    assert curves.router_logit_cap(step, 1.166, 13.757, delta_steps=237, start_step=75) == pytest.approx(
        cap, abs=1e-3
    )


def test_cap_edge_cases():
    assert curves.router_logit_cap(10, 0.0, 0.0, delta_steps=5, start_step=0) == 0.0
    assert curves.router_logit_cap(10, 0.0, 3.0, delta_steps=5, start_step=0) == 3.0
    assert curves.router_logit_cap(2, 4.0, 0.0, delta_steps=4, start_step=0) == pytest.approx(2.0)
    assert curves.router_logit_cap(2, 4.0, 7.0, delta_steps=0, start_step=0) == 7.0


def test_activation_schedule():
    assert curves.active_expert_count(74, RECORD_ACTIVATION, 8) == 1
    assert curves.active_expert_count(75, RECORD_ACTIVATION, 8) == 2
    assert curves.active_expert_count(5000, RECORD_ACTIVATION, 8) == 8
    assert curves.normalize_activation_schedule(((10, 2), (5, 8), (10, 3)), 8) == (
        (0, 8),
        (5, 8),
        (10, 3),
        (10, 8),
    )
    # more experts than the bank has is refused, not clamped
    with pytest.raises(ValueError, match=r"\(5, 9\): counts must be in \[1, 8\]"):
        curves.normalize_activation_schedule(((10, 2), (5, 9)), 8)
    assert curves.normalize_activation_schedule(((10, 2),), 4) == ((0, 2), (10, 2), (10, 4))
    assert curves.second_expert_step(((75, 2), (0, 1))) == 75  # sorted, unlike the reference


def test_gumbel_windows():
    windows = ((75, 441), (459, 488), (1472, -1))
    assert not curves.gumbel_active(74, windows, 1750)
    assert curves.gumbel_active(75, windows, 1750) and not curves.gumbel_active(441, windows, 1750)
    assert curves.gumbel_active(1749, windows, 1750) and not curves.gumbel_active(1750, windows, 1750)
    assert not curves.gumbel_active(100, windows, 1750, enabled=False)
