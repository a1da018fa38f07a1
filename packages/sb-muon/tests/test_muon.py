import copy

import pytest
import torch
from torch import nn

from sb_muon import MomentumWarmup, Muon, MuonAdamW, momentum_warmup, orthogonalize, split_muon_params


def _fill_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def test_update_formula_by_hand():
    p = nn.Parameter(torch.randn(24, 16))
    w0 = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    g = torch.randn(24, 16)
    p.grad = g.clone()
    opt.step()
    buf = 0.1 * g
    direction = 0.1 * g + 0.9 * buf
    scale = (24 / 16) ** 0.5
    expected = w0 * (1 - 0.1 * 0.5) - 0.1 * scale * orthogonalize(direction)
    torch.testing.assert_close(p.detach(), expected)
    assert torch.equal(p.grad, g), "Muon must never modify p.grad"


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_parity_with_torch_muon(adjust, nesterov):
    ours = nn.Parameter(torch.randn(48, 32))
    theirs = nn.Parameter(ours.detach().clone())
    kw = dict(lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=0.1)
    a = Muon([ours], method="quintic", lr_scale=adjust, compute_dtype=torch.bfloat16, **kw)
    b = torch.optim.Muon([theirs], adjust_lr_fn=adjust, **kw)
    for step in range(5):
        _fill_grads([ours], step)
        theirs.grad = ours.grad.clone()
        a.step()
        b.step()
        delta = (ours - theirs).norm() / theirs.norm()
        assert delta < 1e-3, (step, float(delta))


def _train_steps(opt, params, n, seed0):
    for i in range(n):
        _fill_grads(params, seed0 + i)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_is_bit_identical(dtype):
    model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 8, bias=False)).to(dtype)
    opt = Muon(model.parameters(), lr=0.05, weight_decay=0.01, master_weights=True)
    params = list(model.parameters())
    _train_steps(opt, params, 3, 0)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train_steps(opt, params, 2, 100)
    expected = [p.detach().clone() for p in params]

    model2 = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 8, bias=False)).to(dtype)
    model2.load_state_dict(saved_model)
    opt2 = Muon(model2.parameters(), lr=0.05, weight_decay=0.01, master_weights=True)
    opt2.load_state_dict(saved_opt)
    for p in model2.parameters():
        assert opt2.state[p]["momentum_buffer"].dtype == torch.float32
    _train_steps(opt2, list(model2.parameters()), 2, 100)
    for a, b in zip(expected, model2.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def test_master_weights_keep_updates_below_bf16_precision():
    p_plain = nn.Parameter(torch.ones(16, 16, dtype=torch.bfloat16))
    p_master = nn.Parameter(torch.ones(16, 16, dtype=torch.bfloat16))
    plain = Muon([p_plain], lr=1e-4, momentum=0.0)
    master = Muon([p_master], lr=1e-4, momentum=0.0, master_weights=True)
    for _ in range(100):
        p_plain.grad = -torch.eye(16, dtype=torch.bfloat16)
        p_master.grad = -torch.eye(16, dtype=torch.bfloat16)
        plain.step()
        master.step()
    # each step adds ~1e-4 on the diagonal: below bf16's spacing at 1.0 (7.8e-3)
    assert torch.equal(p_plain.detach(), torch.ones(16, 16, dtype=torch.bfloat16))
    assert p_master.detach().float().diagonal().mean() > 1.005


def test_trains_faster_than_sgd():
    torch.manual_seed(0)
    X = torch.randn(256, 32)
    W_true = torch.randn(32, 32)
    Y = torch.tanh(X @ W_true)

    def run(make_opt):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(32, 64, bias=False), nn.Tanh(), nn.Linear(64, 32, bias=False))
        opt = make_opt(net)
        for _ in range(60):
            opt.zero_grad()
            loss = ((net(X) - Y) ** 2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(((net(X) - Y) ** 2).mean())

    muon_loss = run(lambda net: Muon(net.parameters(), lr=0.05))
    sgd_loss = run(lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    assert muon_loss < 0.7 * sgd_loss, (muon_loss, sgd_loss)


def test_closure_and_params_without_grad():
    a, b = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.randn(8, 8))
    b0 = b.detach().clone()
    opt = Muon([a, b], lr=0.1, weight_decay=0.5)

    def closure():
        opt.zero_grad()
        loss = (a ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and float(loss.detach()) > 0
    assert torch.equal(b.detach(), b0), "a parameter without a gradient is neither decayed nor moved"
    assert b not in opt.state


def test_conv_flattened_and_stacked_slices():
    conv = nn.Parameter(torch.randn(8, 4, 3, 3))
    ref = nn.Parameter(conv.detach().reshape(8, 36).clone())
    Muon([conv], lr=0.1)
    opt_c, opt_r = Muon([conv], lr=0.1), Muon([ref], lr=0.1)
    g = torch.randn(8, 4, 3, 3)
    conv.grad, ref.grad = g, g.reshape(8, 36)
    opt_c.step()
    opt_r.step()
    torch.testing.assert_close(conv.detach().reshape(8, 36), ref.detach())

    experts = nn.Parameter(torch.randn(3, 16, 12))
    singles = [nn.Parameter(experts.detach()[i].clone()) for i in range(3)]
    opt_s = Muon([experts], lr=0.1, stacked=True, weight_decay=0.1)
    opt_1 = Muon(singles, lr=0.1, weight_decay=0.1)
    g = torch.randn(3, 16, 12)
    experts.grad = g
    for i, s in enumerate(singles):
        s.grad = g[i].clone()
    opt_s.step()
    opt_1.step()
    for i, s in enumerate(singles):
        torch.testing.assert_close(experts.detach()[i], s.detach(), rtol=1e-5, atol=1e-6)


def test_wd_mul_attribute_and_lr_scales():
    p = nn.Parameter(torch.ones(4, 16))
    p.wd_mul = 2.0
    opt = Muon([p], lr=0.1, weight_decay=0.5, lr_scale="none")
    p.grad = torch.zeros(4, 16)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4, 16), 1 - 0.1 * 0.5 * 2.0))

    rules = [("original", 1.0), ("match_rms_adamw", 0.2 * 16 ** 0.5), ("spectral", 0.5), (3.0, 3.0)]
    for rule, factor in rules:
        q = nn.Parameter(torch.zeros(4, 16))
        g = torch.randn(4, 16)
        q.grad = g
        Muon([q], lr=0.1, momentum=0.0, lr_scale=rule).step()
        torch.testing.assert_close(q.detach(), -0.1 * factor * orthogonalize(g))


def test_per_group_options():
    a, b = nn.Parameter(torch.zeros(8, 8)), nn.Parameter(torch.zeros(8, 8))
    opt = Muon([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.0, "ns_steps": 3}], lr=0.5)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["ns_steps"] == 3
    a.grad, b.grad = torch.randn(8, 8), torch.randn(8, 8)
    opt.step()
    assert a.abs().sum() > 0 and b.abs().sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"ns_steps": -1}, "ns_steps"),
        ({"method": "bogus"}, "method"),
        ({"lr_scale": "bogus"}, "lr_scale"),
        ({"nonfinite": "bogus"}, "nonfinite"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_refuses_vectors_embeddings_and_heads_by_name():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 8), "proj": nn.Linear(8, 8),
                           "lm_head": nn.Linear(8, 10)})
    with pytest.raises(ValueError, match=r"proj\.bias"):
        Muon(model.named_parameters())
    with pytest.raises(ValueError, match=r"embed\.weight.*lm_head\.weight"):
        Muon([(n, p) for n, p in model.named_parameters() if p.ndim == 2])
    Muon([(n, p) for n, p in model.named_parameters() if p.ndim == 2], check_names=False)


def test_nonfinite_gradients_raise_or_skip():
    p = nn.Parameter(torch.randn(8, 8))
    w0 = p.detach().clone()
    opt = Muon([("layer.weight", p)], lr=0.1)
    p.grad = torch.randn(8, 8)
    p.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"layer\.weight"):
        opt.step()
    assert torch.equal(p.detach(), w0)

    opt = Muon([p], lr=0.1, nonfinite="skip")
    p.grad = torch.full((8, 8), float("inf"))
    opt.step()
    assert torch.equal(p.detach(), w0) and opt.skipped_steps == 1 and p not in opt.state
    p.grad = torch.randn(8, 8)
    opt.step()
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), w0)
    assert opt.state_dict()["sb_muon"]["skipped_steps"] == 1


def test_gradient_accumulation_invariance():
    p1, p2 = nn.Parameter(torch.randn(16, 8)), None
    p2 = nn.Parameter(p1.detach().clone())
    o1, o2 = Muon([p1], lr=0.1), Muon([p2], lr=0.1)
    parts = [torch.randn(16, 8) for _ in range(4)]
    p1.grad = sum(parts)
    o1.step()
    p2.grad = torch.zeros(16, 8)
    for g in parts:
        p2.grad += g
    o2.step()
    torch.testing.assert_close(p1.detach(), p2.detach())


def test_muon_adamw_one_step_for_the_whole_model():
    torch.manual_seed(0)
    model = nn.ModuleDict({"embed": nn.Embedding(20, 16), "hidden": nn.Linear(16, 16),
                           "lm_head": nn.Linear(16, 20)})
    muon, other = split_muon_params(model)
    assert [n for n, _ in muon] == ["hidden.weight"]
    assert {n for n, _ in other} == {"embed.weight", "hidden.bias", "lm_head.weight", "lm_head.bias"}
    opt = MuonAdamW([{"params": muon, "use_muon": True, "lr": 0.02},
                     {"params": other, "use_muon": False, "lr": 1e-2, "betas": (0.9, 0.99)}])
    assert opt.param_groups[1]["eps"] == 1e-8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 20, (4, 6))
    loss = nn.functional.cross_entropy(model["lm_head"](model["hidden"](model["embed"](ids))).flatten(0, 1),
                                       ids.flatten())
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert not torch.equal(before[n], p.detach()), n
    # AdamW half matches torch.optim.AdamW on the same parameter and gradient
    w = nn.Parameter(torch.randn(5))
    w_ref = nn.Parameter(w.detach().clone())
    ours = MuonAdamW([{"params": [w], "use_muon": False, "lr": 0.01, "weight_decay": 0.1}])
    ref = torch.optim.AdamW([w_ref], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for i in range(3):
        g = torch.randn(5, generator=torch.Generator().manual_seed(i))
        w.grad, w_ref.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(w.detach(), w_ref.detach())
    with pytest.raises(ValueError, match="use_muon"):
        MuonAdamW([{"params": [w]}])
    with pytest.raises(ValueError, match="MuonAdamW"):
        Muon([{"params": [nn.Parameter(torch.randn(3, 3))], "use_muon": False}])


def test_momentum_warmup():
    assert momentum_warmup(0) == pytest.approx(0.85)
    assert momentum_warmup(150) == pytest.approx(0.90)
    assert momentum_warmup(300) == pytest.approx(0.95) == momentum_warmup(10_000)
    opt = Muon([nn.Parameter(torch.randn(4, 4))], momentum=0.95)
    sched = MomentumWarmup(opt, warmup_steps=10, start=0.85)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.90)
    state = sched.state_dict()
    sched2 = MomentumWarmup(opt, warmup_steps=10, start=0.85)
    sched2.load_state_dict(state)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.90)
