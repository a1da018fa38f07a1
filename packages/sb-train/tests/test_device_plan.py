"""The device plan (sb_train.device_plan): the CUDA branch's decisions computed and checked on a CPU machine,
the CPU plan from stated facts, config overrides, agreement with the libraries' own rules, and build_parts
applying every field of the plan it is given."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from train_helpers import only_run_dir, smoke_config

import sb_train.setup as train_setup
from sb_model.attention_masks import FLEX_AVAILABLE
from sb_model.bank.experts import choose_expert_impl
from sb_train.config_loading import load_config
from sb_train.device_plan import DevicePlan, HardwareFacts, plan_for
from sb_train.distributed import DistEnv
from sb_train.trainer import Trainer

CUDA = torch.device("cuda:0")
HOPPER, AMPERE, VOLTA = (9, 0), (8, 0), (7, 0)
# a CPU whose facts are stated, so the CPU plan does not depend on the machine running the test
CPU_FACTS = HardwareFacts(cpu_parallel_experts=False, cpu_grouped_mm=True, muon_dtype=torch.float32)


@pytest.fixture(autouse=True)
def _no_muon_env(monkeypatch):
    monkeypatch.delenv("SB_MUON_COMPUTE_DTYPE", raising=False)


def test_record_plan_on_hopper():
    plan = plan_for(CUDA, load_config("record"), world_size=8, facts=HardwareFacts(cuda_capability=HOPPER))
    assert plan.device == "cuda:0" and plan.world_size == 8 and plan.capability == HOPPER
    assert plan.autocast_dtype == torch.bfloat16 and plan.param_dtype == torch.float32
    assert plan.compile and plan.compile_kwargs() == {"mode": None, "dynamic": False, "fullgraph": False}
    assert plan.attention == ("flex" if FLEX_AVAILABLE else "sdpa")
    assert (plan.expert_impl, plan.group_align) == ("grouped_mm", 16)  # fused grouped GEMM, 16-row groups
    assert plan.collective_backend == "nccl" and plan.grad_bucket_bytes == 32 * 2**20
    assert plan.pin_memory and plan.non_blocking
    assert plan.muon_compute_dtype == torch.float32  # the record pins TurboMuon to fp32 (as the reference)


def test_cuda_plan_without_the_fused_grouped_gemm_uses_blocked_bmm():
    """sm_80 has no fused grouped GEMM (torch loops with host syncs there): the blocked bmm, 64-row blocks."""
    plan = plan_for(CUDA, load_config("record"), facts=HardwareFacts(cuda_capability=AMPERE))
    assert (plan.expert_impl, plan.group_align) == ("blocked_bmm", 64)
    assert plan.autocast_dtype == torch.bfloat16 and plan.compile and plan.collective_backend == "nccl"


@pytest.mark.parametrize(("capability", "dtype"), [(HOPPER, torch.bfloat16), (AMPERE, torch.bfloat16),
                                                   (VOLTA, torch.float32)])
def test_muon_dtype_on_auto_follows_the_capability(capability, dtype):
    cfg = load_config("record", overrides=['optim.muon_compute_dtype="auto"'])
    assert plan_for(CUDA, cfg, facts=HardwareFacts(cuda_capability=capability)).muon_compute_dtype == dtype


def test_sb_muon_env_override_reaches_the_plan(monkeypatch):
    monkeypatch.setenv("SB_MUON_COMPUTE_DTYPE", "float32")
    cfg = load_config("record", overrides=['optim.muon_compute_dtype="auto"'])
    plan = plan_for(CUDA, cfg, facts=HardwareFacts(cuda_capability=HOPPER))
    assert plan.muon_compute_dtype == torch.float32


def test_cpu_plan_from_stated_facts():
    cfg = load_config("record", overrides=['optim.muon_compute_dtype="auto"'])
    plan = plan_for("cpu", cfg, world_size=2, facts=CPU_FACTS)
    assert plan.autocast_dtype is None and not plan.compile and plan.attention == "sdpa"
    assert (plan.expert_impl, plan.group_align) == ("grouped_mm", 1)
    assert plan.collective_backend == "gloo" and not plan.pin_memory and not plan.non_blocking
    assert plan.muon_compute_dtype == torch.float32 and plan.capability is None
    bf16_cpu = dataclasses.replace(CPU_FACTS, muon_dtype=torch.bfloat16)
    assert plan_for("cpu", cfg, facts=bf16_cpu).muon_compute_dtype == torch.bfloat16
    assert plan_for("cpu", load_config("record"), facts=bf16_cpu).muon_compute_dtype == torch.float32
    parallel = dataclasses.replace(CPU_FACTS, cpu_parallel_experts=True)
    assert (plan_for("cpu", cfg, facts=parallel).expert_impl, plan_for("cpu", cfg, facts=parallel).group_align
            ) == ("cpu_parallel", 1)
    no_kernels = dataclasses.replace(CPU_FACTS, cpu_grouped_mm=False)
    assert (plan_for("cpu", cfg, facts=no_kernels).expert_impl,
            plan_for("cpu", cfg, facts=no_kernels).group_align) == ("blocked_bmm", 64)


def test_config_overrides_win():
    hopper = HardwareFacts(cuda_capability=HOPPER)
    cfg = load_config("record", overrides=['run.autocast="off"', 'run.compile="off"',
                                           'model.attention="sdpa"', 'model.bank.expert_impl="blocked_bmm"'])
    plan = plan_for(CUDA, cfg, facts=hopper)
    assert plan.autocast_dtype is None and not plan.compile and plan.attention == "sdpa"
    assert plan.expert_impl == "blocked_bmm"
    cpu = plan_for("cpu", load_config("record", overrides=['run.autocast="bf16"', 'run.compile="on"']),
                   facts=CPU_FACTS)
    assert cpu.autocast_dtype == torch.bfloat16 and cpu.compile


def test_plan_and_library_rules_agree_on_this_machine():
    """No stated facts: the plan asks the same rules sb-model's bank uses at run time."""
    cfg = load_config("smoke")
    plan = plan_for("cpu", cfg)
    bank = cfg.model.bank
    impl, align = choose_expert_impl(bank, torch.zeros(1), torch.float32)
    assert plan.expert_impl == {"grouped": "grouped_mm", "blocked": "blocked_bmm"}.get(impl, impl)
    assert plan.group_align == align
    resolved = plan.model_config(cfg.model)
    assert choose_expert_impl(resolved.bank, torch.zeros(1), torch.float32) == (impl, align)


def test_plan_round_trips_as_json():
    plan = plan_for(CUDA, load_config("record"), facts=HardwareFacts(cuda_capability=HOPPER))
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["autocast_dtype"] == "bfloat16" and d["capability"] == [9, 0]
    assert d["expert_impl"] == "grouped_mm" and d["muon_compute_dtype"] == "float32"
    assert "sm_90" in plan.describe() and "grouped_mm" in plan.describe()


def test_build_parts_applies_the_plan_it_is_given(smoke_data, tmp_path, monkeypatch, capsys):
    """setup asks plan_for once and follows every field: a plan unlike any default shows up in the built
    parts, the process-group setup, run.json and the start banner."""
    cfg = smoke_config(smoke_data, tmp_path)
    real = plan_for("cpu", cfg, facts=CPU_FACTS)
    odd = dataclasses.replace(
        real, autocast_dtype=torch.bfloat16, compile=True, compile_mode="max-autotune-no-cudagraphs",
        attention="flex" if FLEX_AVAILABLE else "sdpa", expert_impl="blocked_bmm", group_align=32,
        collective_backend="sentinel", grad_bucket_bytes=12345, pin_memory=True, non_blocking=True,
        muon_compute_dtype=torch.bfloat16,
    )
    asked: list[tuple] = []
    monkeypatch.setattr(train_setup, "plan_for", lambda *a, **k: asked.append((a, k)) or odd)
    backends: list[str | None] = []

    def fake_setup(device, *, backend=None):
        backends.append(backend)
        return DistEnv(0, 1, 0, torch.device(device))

    monkeypatch.setattr(train_setup, "setup_distributed", fake_setup)
    trainer = Trainer(cfg)
    try:
        parts = trainer.parts
        assert len(asked) == 1 and parts.plan is odd and backends == ["sentinel"]
        model_cfg = parts.model.config
        assert model_cfg.attention == odd.attention
        assert (model_cfg.bank.expert_impl, model_cfg.bank.group_align) == ("blocked_bmm", 32)
        assert cfg.model.bank.expert_impl == "auto"  # configured value: what run.json and checkpoints keep
        assert isinstance(parts.forward, torch._dynamo.eval_frame.OptimizedModule)
        assert parts.reducer.bucket_bytes == 12345
        assert parts.loader.pin_memory and all(v._loader.pin_memory for v in parts.val_loaders.values())
        muon = [g for g in parts.opt.param_groups if g["use_muon"]]
        assert muon and all(g["compute_dtype"] == torch.bfloat16 for g in muon)
        with trainer._autocast():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        header = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
        assert header["device_plan"] == odd.to_dict()
        assert odd.describe() in capsys.readouterr().err
    finally:
        trainer.close()


def test_plan_is_frozen():
    plan = plan_for("cpu", load_config("smoke"), facts=CPU_FACTS)
    assert isinstance(plan, DevicePlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.compile = True  # type: ignore[misc]
