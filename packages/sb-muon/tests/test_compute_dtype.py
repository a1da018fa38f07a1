"""The default compute dtype: chosen from what the hardware does fast, once, overridable, in the repr."""

import pytest
import torch
from torch import nn

from sb_muon import Muon, orthogonalize
from sb_muon.hardware import ENV_VAR, choose_cpu_dtype, choose_cuda_dtype, compute_choice, read_cpu_flags


def _never():
    raise AssertionError("the probe must not run when the flags decide")


def test_cpu_flags_decide_when_conclusive():
    amx = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
    assert choose_cpu_dtype(amx, _never).dtype == torch.bfloat16
    assert choose_cpu_dtype(frozenset({"avx2", "fma"}), _never).dtype == torch.float32


@pytest.mark.parametrize(("speedup", "dtype"), [(9.0, torch.bfloat16), (1.3, torch.bfloat16),
                                                (0.6, torch.float32), (1.0, torch.float32)])
def test_probe_decides_otherwise(speedup, dtype):
    for flags in (frozenset({"avx512f", "avx512_bf16"}), None):  # AVX512-BF16 without AMX; not x86
        choice = choose_cpu_dtype(flags, lambda: speedup)
        assert choice.dtype == dtype and f"{speedup:.2f}x" in choice.reason
    # AMX flags without oneDNN in this torch build: measure instead of trusting the flags
    assert choose_cpu_dtype(frozenset({"amx_bf16"}), lambda: speedup, onednn=False).dtype == dtype


def test_cuda_rule():
    assert choose_cuda_dtype((9, 0)).dtype == torch.bfloat16
    assert choose_cuda_dtype((8, 0)).dtype == torch.bfloat16
    assert choose_cuda_dtype((7, 5)).dtype == torch.float32
    assert choose_cuda_dtype(None).dtype == torch.bfloat16


def test_read_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t\t: other\n")
    assert read_cpu_flags(str(info)) == frozenset({"fpu", "avx2", "avx512_bf16"})
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert read_cpu_flags(str(info)) is None
    assert read_cpu_flags(str(tmp_path / "missing")) is None


def test_env_override_and_explicit_dtype(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bf16")
    assert compute_choice("cpu").dtype == torch.bfloat16 and ENV_VAR in compute_choice("cpu").reason
    assert compute_choice("cuda").dtype == torch.bfloat16
    G = torch.randn(16, 24)
    assert torch.equal(orthogonalize(G), orthogonalize(G, dtype=torch.bfloat16))
    monkeypatch.setenv(ENV_VAR, "fp32")
    assert torch.equal(orthogonalize(G), orthogonalize(G, dtype=torch.float32))
    p = nn.Parameter(torch.randn(4, 4))
    text = repr(Muon([p]))
    assert "compute_dtype: auto: cpu -> float32 (set by SB_MUON_COMPUTE_DTYPE)" in text
    assert "compute_dtype: torch.bfloat16" in repr(Muon([p], compute_dtype=torch.bfloat16))
    monkeypatch.setenv(ENV_VAR, "int8")
    with pytest.raises(ValueError, match=ENV_VAR):
        compute_choice("cpu")


def test_decision_is_cached_per_process(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    first = compute_choice("cpu")
    assert compute_choice(torch.device("cpu")) is first
    assert first.dtype in (torch.float32, torch.bfloat16) and first.reason.startswith("cpu: ")
