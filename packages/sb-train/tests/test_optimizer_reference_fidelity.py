"""The optimizer behaves as the reference's (docs/design/optimizer.md): experts without tokens stay put,
TurboMuon computes in fp32, and its power iteration starts from a seeded random vector (reproducible on
resume)."""

from __future__ import annotations

import io

import torch
from train_helpers import smoke_config

import sb_muon.muon
from sb_model import GPT, GPTConfig
from sb_train.config import OptimConfig
from sb_train.config_loading import load_config
from sb_train.optimizer import build_optimizer, muon_compute_dtype
from sb_train.trainer import Trainer


def test_record_preset_computes_turbomuon_in_fp32_on_cuda():
    record = load_config("record").optim
    assert muon_compute_dtype(record, "cuda") == torch.float32
    assert muon_compute_dtype(load_config("record-1gpu").optim, "cuda") == torch.float32
    assert muon_compute_dtype(OptimConfig(muon_compute_dtype="bfloat16"), "cuda") == torch.bfloat16
    assert muon_compute_dtype(OptimConfig(muon_compute_dtype="auto"), "cpu") == sb_muon.default_compute_dtype(
        torch.device("cpu"))
    opt = build_optimizer(GPT(GPTConfig.record(), device="meta"), record, seed=5)
    muon = {g["name"]: g for g in opt.param_groups if g["use_muon"]}
    assert all(g["compute_dtype"] == torch.float32 for g in muon.values())
    assert all(g["power_iter_start"] == "random" and g["power_iter_seed"] == 5 for g in muon.values())
    assert muon["shared_ffn"]["skip_idle_slices"] and not muon["attn"]["skip_idle_slices"]
    # "auto" leaves the choice to sb-muon, per device
    auto = build_optimizer(GPT(GPTConfig.tiny(), device="meta"), OptimConfig(muon_compute_dtype="auto"))
    assert all(g["compute_dtype"] is None for g in auto.param_groups if g["use_muon"])


def _tiny_with_grads(seed: int) -> tuple[GPT, list[list[torch.Tensor]]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny())
    gen = torch.Generator().manual_seed(seed)
    grads = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(4)]
    return model, grads


def _step(opt: torch.optim.Optimizer, model: GPT, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    opt.step()


def test_turbo_steps_in_fp32_and_resumes_identically(monkeypatch):
    dtypes = []
    real = sb_muon.muon.orthogonalize

    def spy(*args, **kwargs):
        dtypes.append(kwargs["dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sb_muon.muon, "orthogonalize", spy)
    cfg = load_config("record").optim
    model, grads = _tiny_with_grads(1)
    opt = build_optimizer(model, cfg, seed=3)
    for g in grads:
        _step(opt, model, g)
    assert dtypes and set(dtypes) == {torch.float32}
    expected = [p.detach().clone() for p in model.parameters()]

    model2, _ = _tiny_with_grads(1)
    opt2 = build_optimizer(model2, cfg, seed=3)
    for g in grads[:2]:
        _step(opt2, model2, g)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "optimizer": opt2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model3, _ = _tiny_with_grads(1)
    model3.load_state_dict(saved["model"])
    opt3 = build_optimizer(model3, cfg, seed=3)
    opt3.load_state_dict(saved["optimizer"])
    for g in grads[2:]:
        _step(opt3, model3, g)
    for p, q in zip(expected, model3.parameters(), strict=True):
        assert torch.equal(p, q)
    # the random start matters: another seed gives other updates
    model4, _ = _tiny_with_grads(1)
    opt4 = build_optimizer(model4, cfg, seed=4)
    for g in grads:
        _step(opt4, model4, g)
    bank = [n for n, _ in model.named_parameters()].index("bank.w1")
    assert not torch.equal(expected[bank], list(model4.parameters())[bank])


def _train_with_idle_experts(smoke_data, tmp_path, skip: bool) -> tuple[list, list]:
    """Smoke steps 0-2 with all 4 experts live, then steps 3-7 with experts 2 and 3 masked inactive, so they
    get no tokens (all layers, all micro-batches). Returns (w1, w2, their momenta) after steps 2 and 7."""
    cfg = smoke_config(smoke_data, tmp_path, "schedule.expert_activation_schedule=[[0, 4]]",
                       f"optim.muon_skip_idle_experts={'true' if skip else 'false'}")
    trainer = Trainer(cfg)
    bank, opt = trainer.model.bank, trainer.opt
    snapshots = []
    for step in range(8):
        values = trainer.apply_schedule(step)
        if step >= 3:
            trainer.model.routing_schedule.set_(active_experts=2)
        trainer.train_step(step, values)
        if step in (2, 7):
            momenta = [opt.state[w]["momentum_buffer"] for w in (bank.w1, bank.w2)]
            snapshots.append([t.detach().clone() for t in (bank.w1, bank.w2, *momenta)])
    return snapshots[0], snapshots[1]


def test_experts_without_tokens_stay_put_in_training(smoke_data, tmp_path):
    before, after = _train_with_idle_experts(smoke_data, tmp_path / "skip", skip=True)
    for b, a in zip(before, after, strict=True):
        assert b[2:].abs().max() > 0  # the idle experts had trained and had momentum
        assert torch.equal(a[2:], b[2:])  # weights and momentum bit-identical while idle
        assert not torch.equal(a[:2], b[:2])  # the live experts trained
    # without the option the idle experts keep moving (what the reference never did)
    before, after = _train_with_idle_experts(smoke_data, tmp_path / "noskip", skip=False)
    assert not torch.equal(after[0][2:], before[0][2:])
