"""skip_idle_slices: a slice with an all-zero gradient stays put, like a parameter without a gradient."""

import pytest
import torch

from sb_muon import Muon, MuonAdamW
from sb_muon.idle import active_slices

E, ROWS, COLS = 4, 12, 10
IDLE = 2
SETTINGS = [
    dict(method="turbo", ns_steps=4, nesterov=False, momentum=0.8, weight_decay=0.1),
    dict(method="tuned5", ns_steps=5, nesterov=True, momentum=0.95, weight_decay=0.0),
]


def _grads(steps: int, idle: range, seed: int = 0) -> list[torch.Tensor]:
    """Stacked gradients; slice IDLE is exactly zero at the steps in `idle`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        g = torch.randn(E, ROWS, COLS, generator=gen)
        if t in idle:
            g[IDLE] = 0.0
        out.append(g)
    return out


def _stacked(settings: dict, skip: bool, w0: torch.Tensor) -> tuple[torch.nn.Parameter, Muon]:
    w = torch.nn.Parameter(w0.clone())
    return w, Muon([w], lr=0.02, stacked=True, skip_idle_slices=skip, **settings)


@pytest.mark.parametrize("settings", SETTINGS, ids=[s["method"] for s in SETTINGS])
def test_idle_slice_stays_bit_identical_for_300_steps(settings):
    """One step with a gradient (momentum non-zero), then 300 idle steps: weights and momentum unchanged."""
    w0 = torch.randn(E, ROWS, COLS, generator=torch.Generator().manual_seed(1))
    w, opt = _stacked(settings, True, w0)
    grads = _grads(301, range(1, 301))
    w.grad = grads[0]
    opt.step()
    w1, buf1 = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    assert buf1[IDLE].abs().max() > 0
    for g in grads[1:]:
        w.grad = g
        opt.step()
    assert torch.equal(w[IDLE], w1[IDLE])
    assert torch.equal(opt.state[w]["momentum_buffer"][IDLE], buf1[IDLE])
    others = [e for e in range(E) if e != IDLE]
    assert not torch.equal(w[others], w1[others])


def test_without_the_option_an_idle_slice_keeps_moving():
    """What the option prevents: the momentum decays but the orthogonalized step stays full size."""
    settings = SETTINGS[0]
    w0 = torch.randn(E, ROWS, COLS, generator=torch.Generator().manual_seed(1))
    w, opt = _stacked({**settings, "weight_decay": 0.0}, False, w0)
    grads = _grads(20, range(1, 20))  # one step with a gradient, then 19 idle ones
    w.grad = grads[0]
    opt.step()
    one_step = (w[IDLE] - w0[IDLE]).norm()
    for g in grads[1:]:
        w.grad = g
        opt.step()
    assert (w[IDLE] - w0[IDLE]).norm() > 15 * one_step  # 20 steps in the same stale direction


@pytest.mark.parametrize("settings", SETTINGS, ids=[s["method"] for s in SETTINGS])
def test_stack_matches_one_parameter_per_slice(settings):
    """After one active and 300 idle steps the slice's first update (and every other slice's) equals that of
    an optimizer with one parameter per slice, where the idle slice simply has no gradient."""
    w0 = torch.randn(E, ROWS, COLS, generator=torch.Generator().manual_seed(1))
    w, opt = _stacked(settings, True, w0)
    experts = [torch.nn.Parameter(w0[e].clone()) for e in range(E)]
    ref = Muon(experts, lr=0.02, **settings)
    idle = range(1, 301)
    for t, g in enumerate(_grads(303, idle)):
        before = w[IDLE].detach().clone()
        w.grad = g
        for e, p in enumerate(experts):
            p.grad = None if (e == IDLE and t in idle) else g[e].clone()
        opt.step()
        ref.step()
        if t == 301:  # the first step with a gradient again
            assert not torch.equal(w[IDLE], before)
            torch.testing.assert_close(w[IDLE] - before, experts[IDLE] - before, rtol=1e-6, atol=1e-7)
    for e in range(E):
        torch.testing.assert_close(w[e], experts[e].detach(), rtol=1e-6, atol=1e-7)
        ref_buf = ref.state[experts[e]]["momentum_buffer"]
        torch.testing.assert_close(opt.state[w]["momentum_buffer"][e], ref_buf, rtol=1e-6, atol=1e-7)


def test_bf16_master_weights_idle_slice():
    w0 = torch.randn(E, ROWS, COLS, generator=torch.Generator().manual_seed(1)).bfloat16()
    w = torch.nn.Parameter(w0.clone())
    opt = Muon([w], lr=0.02, stacked=True, skip_idle_slices=True, master_weights=True, weight_decay=0.1)
    grads = _grads(30, range(1, 30))
    w.grad = grads[0].bfloat16()
    opt.step()
    w1, master1 = w.detach().clone(), opt.state[w]["master_weight"].clone()
    for g in grads[1:]:
        w.grad = g.bfloat16()
        opt.step()
    assert torch.equal(w[IDLE], w1[IDLE])
    assert torch.equal(opt.state[w]["master_weight"][IDLE], master1[IDLE])


def test_unstacked_parameter_is_one_slice():
    """A 2-D parameter whose whole gradient is zero is skipped; its (non-zero) momentum is kept as it is."""
    w = torch.nn.Parameter(torch.randn(ROWS, COLS))
    opt = Muon([w], lr=0.02, skip_idle_slices=True)
    w.grad = torch.randn(ROWS, COLS)
    opt.step()
    w_after, buf_after = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    for _ in range(5):
        w.grad = torch.zeros(ROWS, COLS)
        opt.step()
    assert torch.equal(w, w_after)
    assert torch.equal(opt.state[w]["momentum_buffer"], buf_after)


def test_active_slices_mask():
    g = torch.zeros(3, 2, 4, 5)
    g[0, 1, 2, 3] = -1e-30
    g[2, 0] = float("nan")
    mask = active_slices(g, stacked=True)
    assert mask.shape == (3, 2, 1, 1)
    assert mask.flatten().tolist() == [False, True, False, False, True, False]
    assert active_slices(g, stacked=False).shape == (1, 1, 1, 1)
    assert not active_slices(torch.zeros(4, 5), stacked=True).any()
    assert not active_slices(-torch.zeros(4, 5), stacked=True).any()  # -0.0 is zero


def test_hybrid_passes_the_option_and_validates_it():
    w = torch.nn.Parameter(torch.randn(E, ROWS, COLS))
    b = torch.nn.Parameter(torch.randn(COLS))
    opt = MuonAdamW([{"params": [w], "use_muon": True, "stacked": True, "skip_idle_slices": True},
                     {"params": [b], "use_muon": False}])
    assert opt.param_groups[0]["skip_idle_slices"] is True
    with pytest.raises(ValueError, match="skip_idle_slices"):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], skip_idle_slices="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_idle_detection_does_not_sync_on_cuda():
    w = torch.nn.Parameter(torch.randn(E, ROWS, COLS, device="cuda"))
    opt = Muon([w], stacked=True, skip_idle_slices=True, method="turbo", power_iter_start="random",
               nonfinite="ignore")
    g = torch.randn(E, ROWS, COLS, device="cuda")
    g[IDLE] = 0
    w.grad = g
    opt.step()  # warm up (lazy state creation, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
