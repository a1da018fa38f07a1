"""Schedules against the values listed in spec 2.7 and 2.9 for the record preset."""

import pytest
import torch

import sb_model.schedules as sm

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
    got = sm.router_temperature(
        step,
        1750,
        1.464,
        0.93744,
        anchor_delta_steps=284,
        anchor_ratio=0.49,
        start_step=sm.second_expert_step(RECORD_ACTIVATION),
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
    assert sm.router_logit_cap(step, 1.166, 13.757, delta_steps=237, start_step=75) == pytest.approx(
        cap, abs=1e-3
    )


def test_cap_edge_cases():
    assert sm.router_logit_cap(10, 0.0, 0.0, delta_steps=5, start_step=0) == 0.0
    assert sm.router_logit_cap(10, 0.0, 3.0, delta_steps=5, start_step=0) == 3.0
    assert sm.router_logit_cap(2, 4.0, 0.0, delta_steps=4, start_step=0) == pytest.approx(2.0)
    assert sm.router_logit_cap(2, 4.0, 7.0, delta_steps=0, start_step=0) == 7.0


def test_activation_schedule():
    assert sm.active_expert_count(74, RECORD_ACTIVATION, 8) == 1
    assert sm.active_expert_count(75, RECORD_ACTIVATION, 8) == 2
    assert sm.active_expert_count(5000, RECORD_ACTIVATION, 8) == 8
    assert sm.normalize_activation_schedule(((10, 2), (5, 9), (10, 3)), 8) == (
        (0, 8),
        (5, 8),
        (10, 3),
        (10, 8),
    )
    assert sm.normalize_activation_schedule(((10, 2),), 4) == ((0, 2), (10, 2), (10, 4))
    assert sm.second_expert_step(((75, 2), (0, 1))) == 75  # sorted, unlike the reference
    assert sm.active_expert_mask(3, 5).tolist() == [True, True, True, False, False]


def test_gumbel_windows():
    windows = ((75, 441), (459, 488), (1472, -1))
    assert not sm.gumbel_active(74, windows, 1750)
    assert sm.gumbel_active(75, windows, 1750) and not sm.gumbel_active(441, windows, 1750)
    assert sm.gumbel_active(1749, windows, 1750) and not sm.gumbel_active(1750, windows, 1750)
    assert not sm.gumbel_active(100, windows, 1750, enabled=False)


def test_layer_boost_record_values():
    temp = sm.layer_multipliers(28, 0.2)
    lb = sm.layer_multipliers(28, 0.5)
    assert temp[0].item() == pytest.approx(1.0) and temp[27].item() == pytest.approx(1.0)
    assert temp.max().item() == pytest.approx(1.198, abs=1e-3) and int(temp.argmax()) == 13
    assert lb.max().item() == pytest.approx(1.494, abs=1e-3)
    assert sm.layer_boost_shape(0, 28, "valley") == pytest.approx(1.0)
    assert (
        sm.layer_boost_shape(0, 28, "linear_start") == 1.0
        and sm.layer_boost_shape(27, 28, "linear_end") == 1.0
    )
    with pytest.raises(ValueError, match="shape must be"):
        sm.layer_boost_shape(0, 4, "bump")


def test_routing_schedule_set_is_in_place():
    sched = sm.RoutingSchedule.create(3, 4, temperature=1.5, active_experts=2)
    ids = [id(t) for t in (sched.temperature, sched.active_mask)]
    sched.set_(temperature=0.9, active_experts=4, gumbel=True, logit_cap=2.0)
    assert [id(t) for t in (sched.temperature, sched.active_mask)] == ids
    assert sched.temperature.item() == pytest.approx(0.9) and sched.active_mask.all()
    assert sched.gumbel.item() == 1.0 and sched.logit_cap.item() == 2.0
    with pytest.raises(ValueError, match="temp_mult must have shape"):
        sm.RoutingSchedule.create(3, 4, temp_mult=torch.ones(2))
