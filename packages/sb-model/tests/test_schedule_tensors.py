"""The routing schedule tensors and the per-layer multipliers (docs/design/model.md, per-layer boosts)."""

import pytest
import torch

import sb_model.schedule_tensors as sm


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


def test_active_expert_mask_keeps_the_first_experts():
    assert sm.active_expert_mask(3, 5).tolist() == [True, True, True, False, False]


def test_routing_schedule_set_is_in_place():
    sched = sm.RoutingSchedule.create(3, 4, temperature=1.5, active_experts=2)
    ids = [id(t) for t in (sched.temperature, sched.active_mask)]
    sched.set_(temperature=0.9, active_experts=4, gumbel=True, logit_cap=2.0)
    assert [id(t) for t in (sched.temperature, sched.active_mask)] == ids
    assert sched.temperature.item() == pytest.approx(0.9) and sched.active_mask.all()
    assert sched.gumbel.item() == 1.0 and sched.logit_cap.item() == 2.0
    with pytest.raises(ValueError, match="temp_mult must have shape"):
        sm.RoutingSchedule.create(3, 4, temp_mult=torch.ones(2))
