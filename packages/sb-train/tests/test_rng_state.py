"""capture_rng_state / restore_rng_state: the draws after a restore repeat the draws after the capture."""

import io
import random

import numpy as np
import pytest
import torch

from sb_train.rng_state import capture_rng_state, restore_rng_state


def _draw_all() -> dict:
    return {
        "python": [random.random() for _ in range(3)] + [random.gauss(0.0, 1.0), random.getrandbits(64)],
        "numpy": [*np.random.rand(4).tolist(), float(np.random.standard_normal())],
        "torch": torch.rand(5),
        "torch_normal": torch.randn(3),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["python"] == b["python"]
    assert a["numpy"] == b["numpy"]
    assert torch.equal(a["torch"], b["torch"])
    assert torch.equal(a["torch_normal"], b["torch_normal"])


def test_restore_repeats_the_draws_of_every_source():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0.0, 1.0)  # leaves a cached second Gaussian in Python's state
    np.random.standard_normal()  # and in NumPy's
    state = capture_rng_state()
    first = _draw_all()
    second = _draw_all()
    assert first["python"] != second["python"], "the generators must advance between draws"
    restore_rng_state(state)
    _assert_same(_draw_all(), first)
    _assert_same(_draw_all(), second)


def test_state_survives_a_weights_only_round_trip():
    torch.manual_seed(0)
    state = capture_rng_state()
    expected = _draw_all()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _draw_all()  # move every generator away from the captured point
    restore_rng_state(loaded)
    _assert_same(_draw_all(), expected)


def test_each_source_is_restored_on_its_own():
    state = capture_rng_state()
    expected = torch.rand(4)
    restore_rng_state({"version": state["version"], "torch": state["torch"]})
    assert torch.equal(torch.rand(4), expected)


def test_capture_holds_only_the_available_sources():
    state = capture_rng_state()
    assert {"python", "numpy", "torch"} <= state.keys()
    assert ("cuda" in state) == torch.cuda.is_available()


def test_unknown_version_is_rejected():
    with pytest.raises(ValueError, match="version"):
        restore_rng_state({"version": 99})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_are_restored():
    state = capture_rng_state()
    expected = torch.rand(8, device="cuda")
    torch.rand(8, device="cuda")
    restore_rng_state(state)
    assert torch.equal(torch.rand(8, device="cuda"), expected)
