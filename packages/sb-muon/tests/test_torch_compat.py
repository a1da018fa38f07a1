"""sb_muon.Muon as a drop-in for torch.optim.Muon: its constructor inputs, its error inputs, copies."""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

from sb_muon import QUINTIC, Muon, MuonAdamW, orthogonalize

needs_torch_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="needs torch >= 2.9")

# torch.optim.Muon's own test inputs (optim_inputs_func_muon in torch/testing/_internal/
# common_optimizers.py, restated: that module needs torch's test dependencies), plus the other
# accepted values of adjust_lr_fn and a 1-element tensor lr.
TORCH_INPUTS = [
    {},
    {"lr": 0.01},
    {"lr": torch.tensor(0.001)},
    {"weight_decay": 0.2},
    {"momentum": 0.8},
    {"ns_steps": 6},
    {"ns_coefficients": (3.4, -4.7, 2.0)},
    {"adjust_lr_fn": "match_rms_adamw"},
    {"adjust_lr_fn": "spectral_unclamped"},
    {"adjust_lr_fn": "original"},
    {"adjust_lr_fn": None},
    {"lr": torch.tensor([0.01])},
    {"nesterov": False},
]
TORCH_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.1}  # torch's defaults that differ from ours


def _clone(kwargs):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@needs_torch_muon
@pytest.mark.parametrize("kwargs", TORCH_INPUTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_torch_inputs_step_like_torch(kwargs):
    """Same inputs, torch's defaults and torch's triple in bf16: the same trajectory (< 1e-2 of the move)."""
    shapes = [(24, 16), (16, 40)]
    ours = [nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    ours_kw = {**TORCH_DEFAULTS, "ns_coefficients": QUINTIC, **_clone(kwargs)}
    a = Muon(ours, compute_dtype=torch.bfloat16, **ours_kw)
    b = torch.optim.Muon(theirs, **_clone(kwargs))
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, p0 in zip(ours, theirs, start, strict=True):
        moved = (q.detach() - p0).norm()
        assert moved > 0
        gap = (p.detach() - q.detach()).norm()
        assert gap < 3e-2 * moved, float(gap / moved)


def _sample():
    return nn.Parameter(torch.randn(1, 1)), nn.Parameter(torch.randn(1, 1))


# torch's shared and Muon-specific error inputs (optim_error_inputs_func_muon), restated:
# (params builder, kwargs, expected exception or warning, message regex).
ERROR_INPUTS = [
    (lambda p, q: p, {}, TypeError,
     "params argument given to the optimizer should be an iterable of Tensors or dicts"),
    (lambda p, q: [p, p], {}, UserWarning, "a parameter group with duplicate parameters"),
    (lambda p, q: {p, q}, {}, FutureWarning,
     "optimizer parameters need to be organized in ordered collections"),
    (lambda p, q: [{"params": p}, {"params": p}], {}, ValueError,
     "some parameters appear in more than one parameter group"),
    (lambda p, q: [p], {"lr": torch.tensor([0.001, 0.001])}, ValueError, "Tensor lr must be 1-element"),
    (lambda p, q: [("weight", p), q], {}, ValueError,
     "all optimizer params should be with/without names. Some param names are missing"),
    (lambda p, q: [{"params": [p], "lr": 1e-2}, {"params": [("weight", q)]}], {}, ValueError,
     "all optimizer param groups should be with/without names. cannot add param group with names"),
    (lambda p, q: [p], {"adjust_lr_fn": "arbitrary"}, ValueError,
     "Adjust learning rate function arbitrary is not supported"),
]


@pytest.mark.parametrize("optimizer", [Muon, pytest.param("torch", marks=needs_torch_muon)])
@pytest.mark.parametrize(("build", "kwargs", "error", "regex"), ERROR_INPUTS)
def test_torch_error_inputs(optimizer, build, kwargs, error, regex):
    """The same error type and message as torch.optim.Muon (checked against torch too)."""
    cls = torch.optim.Muon if optimizer == "torch" else optimizer
    params = build(*_sample())
    if issubclass(error, Warning):
        with pytest.warns(error, match=regex):
            cls(params, **kwargs)
    else:
        with pytest.raises(error, match=regex):
            cls(params, **kwargs)


def test_deliberate_differences_from_torch_errors():
    """Where sb-muon differs on purpose (README, "Migrating from torch.optim.Muon")."""
    cube = nn.Parameter(torch.rand(2, 3, 4))  # torch: ValueError; we flatten to (2, 12) like a conv kernel
    opt = Muon([cube], lr=0.1)
    cube.grad = torch.rand_like(cube)
    opt.step()
    flat = cube.detach()
    assert torch.isfinite(flat).all()
    complex_param = torch.rand(2, 3, dtype=torch.complex64)  # torch: RuntimeError at step(); we: at once
    with pytest.raises(ValueError, match="Muon does not support complex parameters"):
        Muon([complex_param])
    with pytest.raises(ValueError, match="momentum"):  # torch accepts momentum >= 1
        Muon([nn.Parameter(torch.randn(2, 2))], momentum=1.0)


def test_positional_arguments_are_torchs():
    p = nn.Parameter(torch.randn(4, 4))
    group = Muon([p], 0.01, 0.1, 0.9, False, None, 1e-6, 3, "match_rms_adamw").param_groups[0]
    assert [group[k] for k in ("lr", "weight_decay", "momentum", "nesterov")] == [0.01, 0.1, 0.9, False]
    assert (group["eps"], group["ns_steps"], group["lr_scale"]) == (1e-6, 3, "match_rms_adamw")
    with pytest.raises(ValueError, match="either adjust_lr_fn"):
        Muon([p], adjust_lr_fn="original", lr_scale="none")
    with pytest.raises(ValueError, match="either ns_coefficients"):
        Muon([p], ns_coefficients=QUINTIC, method="tuned5")


@pytest.mark.parametrize(("adjust", "tall", "wide"), [
    (None, 2.0, 1.0),                            # "original": sqrt(max(1, rows/cols))
    ("original", 2.0, 1.0),
    ("match_rms_adamw", 0.2 * 32 ** 0.5, 0.2 * 32 ** 0.5),  # 0.2 sqrt(max(rows, cols))
    ("spectral_unclamped", 2.0, 0.5),            # sqrt(rows/cols), not clamped
])
def test_adjust_lr_fn_scales_the_step(adjust, tall, wide):
    for shape, factor in (((32, 8), tall), ((8, 32), wide)):
        p = nn.Parameter(torch.zeros(*shape))
        g = torch.randn(*shape)
        p.grad = g
        Muon([p], lr=0.1, momentum=0.0, adjust_lr_fn=adjust).step()
        torch.testing.assert_close(p.detach(), -0.1 * factor * orthogonalize(g))


def test_ns_coefficients_is_a_custom_schedule():
    g = torch.randn(12, 20)
    schedule = [QUINTIC, (3.4, -4.7, 2.0)]
    for coefficients, method in ((QUINTIC, "quintic"), (schedule, schedule)):
        p, q = nn.Parameter(torch.zeros(12, 20)), nn.Parameter(torch.zeros(12, 20))
        p.grad, q.grad = g.clone(), g.clone()
        Muon([p], momentum=0.0, ns_coefficients=coefficients).step()
        Muon([q], momentum=0.0, method=method).step()
        assert torch.equal(p.detach(), q.detach())


def test_tensor_lr_is_a_live_scalar():
    g = torch.randn(8, 8)
    moved = []
    for lr in (0.1, torch.tensor(0.1), torch.tensor([0.1])):
        p = nn.Parameter(torch.zeros(8, 8))
        p.grad = g.clone()
        Muon([p], lr=lr, momentum=0.0).step()
        moved.append(p.detach())
    assert torch.equal(moved[0], moved[1]) and torch.equal(moved[0], moved[2])
    lr = torch.tensor([0.1])
    p = nn.Parameter(torch.ones(8, 8))
    opt = Muon([p], lr=lr, weight_decay=0.5)
    lr.fill_(0.0)  # an in-place change of the caller's tensor (as torch's LR schedulers make) is seen
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.detach(), torch.ones(8, 8))


def _hybrid(seed):
    torch.manual_seed(seed)
    w, b = nn.Parameter(torch.randn(16, 12)), nn.Parameter(torch.randn(12))
    opt = MuonAdamW([{"params": [w], "use_muon": True}, {"params": [b], "use_muon": False, "lr": 0.01}],
                    nonfinite="skip", weight_decay=0.01)
    return opt, [w, b]


def _plain(seed):
    torch.manual_seed(seed)
    ws = [nn.Parameter(torch.randn(16, 12)), nn.Parameter(torch.randn(3, 8, 8))]
    return Muon(ws, lr=torch.tensor(0.05), nonfinite="skip", stacked=True, master_weights=True), ws


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("make", [_plain, _hybrid])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_step_identically(make, how):
    opt, params = make(0)
    for i in range(2):
        _grads(params, i)
        opt.step()
    opt.skipped_steps = 3
    dup = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    dup_params = [p for g in dup.param_groups for p in g["params"]]
    assert set(vars(opt)) <= set(vars(dup)), set(vars(opt)) - set(vars(dup))
    assert dup.nonfinite == "skip" and dup.skipped_steps == 3 and dup.process_group is None
    for i in range(2, 5):
        _grads(params, i)
        _grads(dup_params, i)
        opt.step()
        dup.step()
    for p, q in zip(params, dup_params, strict=True):
        assert p is not q and torch.equal(p.detach(), q.detach())
    assert repr(dup) == repr(opt)


def test_setstate_defaults_missing_keys():
    opt, params = _hybrid(0)
    state = opt.__getstate__()
    for group in state["param_groups"]:
        for key in ("method", "lr_scale", "stacked", "compute_dtype", "eps"):
            group.pop(key, None)
    state.pop("sb_muon_attrs")  # a pickle of an older version
    old = MuonAdamW.__new__(MuonAdamW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old.__setstate__(state)
    assert old.param_groups[0]["method"] == "tuned5" and old.param_groups[1]["eps"] == 1e-8
    assert old.nonfinite == "raise" and old.skipped_steps == 0
    _grads(params, 0)
    old.step()


@needs_torch_muon
def test_loads_a_torch_muon_state_dict():
    ours = [nn.Parameter(torch.randn(24, 16))]
    theirs = [nn.Parameter(ours[0].detach().clone())]
    b = torch.optim.Muon(theirs, lr=0.02, adjust_lr_fn="match_rms_adamw")
    for i in range(2):
        _grads(theirs, i)
        b.step()
    ours[0].data.copy_(theirs[0].detach())
    a = Muon(ours, compute_dtype=torch.bfloat16, nonfinite="skip")
    a.load_state_dict(b.state_dict())
    assert a.nonfinite == "skip"
    group = a.param_groups[0]
    assert group["method"] == tuple(QUINTIC) and group["lr_scale"] == "match_rms_adamw"
    assert group["weight_decay"] == 0.1 and group["lr"] == 0.02
    start = theirs[0].detach().clone()
    for i in range(2, 4):
        _grads(theirs, i)
        _grads(ours, i)
        a.step()
        b.step()
    assert (ours[0] - theirs[0]).norm() < 3e-2 * (theirs[0].detach() - start).norm()
