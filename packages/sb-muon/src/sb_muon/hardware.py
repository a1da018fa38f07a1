"""Choosing the default Newton–Schulz compute dtype from what the device computes fast.

Muon's cost is matrix products, and the 5-step error is set by the coefficient schedule more than
by the dtype, so the default is the dtype whose products the device runs fastest:

- CUDA: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0), fp32 on older ones.
- CPU: bf16 only when the CPU runs bf16 products faster than fp32 ones. x86 CPUs with AMX
  (``amx_bf16`` in /proc/cpuinfo) do (about 10x); x86 CPUs with no bf16 instructions at all do not
  (bf16 is emulated, ~30x slower). For everything else, including AVX512-BF16 without AMX (measured:
  bf16 at 0.55-0.65x of fp32 speed on a Xeon with it) and non-x86 CPUs, a short timing probe of a
  batched bf16 product against the same fp32 product decides (bf16 if it is clearly faster: > 1.25x).

The decision is made once per process and device type and cached. ``SB_MUON_COMPUTE_DTYPE``
(``bfloat16``/``bf16``, ``float32``/``fp32``, ``float16``/``fp16`` or ``auto``) overrides it for every
device; a ``compute_dtype`` passed to the optimizer or to ``orthogonalize`` overrides both.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENV_VAR = "SB_MUON_COMPUTE_DTYPE"
#: bf16 is chosen on a probed CPU when its product is more than this much faster than fp32: a clear margin,
#: so that a timing disturbed by other processes on a loaded machine does not flip the choice (AMX-class
#: CPUs measure ~10x, AVX512-BF16-only ones 0.55-0.65x).
BF16_MIN_SPEEDUP = 1.25
_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class ComputeChoice:
    """A default compute dtype and the reason it was chosen (shown in the optimizer's repr)."""

    dtype: torch.dtype
    reason: str

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')} ({self.reason})"


def env_override() -> torch.dtype | None:
    """The dtype named by SB_MUON_COMPUTE_DTYPE, or None when unset or "auto"."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in _DTYPE_NAMES:
        raise ValueError(f"{ENV_VAR}={value!r}: use one of {sorted(_DTYPE_NAMES)} or 'auto'")
    return _DTYPE_NAMES[value]


def read_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The x86 feature flags of the first CPU in /proc/cpuinfo; None where there is no x86 flags line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def measure_bf16_speedup(n: int = 512, reps: int = 3) -> float:
    """fp32 time / bf16 time of one batched product of the kind Newton–Schulz runs (n x n, CPU).

    Measured on one thread (the per-core speed is what the hardware decides; with all threads, other
    processes on the same cores made the ratio swing between 0.75 and 2.4 on a loaded 2-core machine,
    against 0.55-0.65 on one thread), after a warm-up call, keeping the fastest of `reps` interleaved
    timings of each. About 25 ms on a current x86 core.
    """
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(1, n, n, generator=gen) / n ** 0.5
    x16 = x32.to(torch.bfloat16)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rep in range(reps + 1):
            for x in (x32, x16):
                t0 = time.perf_counter()
                torch.baddbmm(x, x, x.mT, beta=0.5, alpha=1.5)
                if rep:  # rep 0 is the warm-up
                    best[x.dtype] = min(best[x.dtype], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


def choose_cpu_dtype(flags: frozenset[str] | None, probe: Callable[[], float],
                     onednn: bool = True) -> ComputeChoice:
    """The CPU decision, from the x86 flags (None: unknown) and a bf16-speedup probe (run only if needed)."""
    if flags is not None and onednn and "amx_bf16" in flags:
        return ComputeChoice(torch.bfloat16, "cpu: AMX bf16 matrix units (amx_bf16)")
    if flags is not None and not flags & {"amx_bf16", "avx512_bf16"}:
        return ComputeChoice(torch.float32, "cpu: no native bf16 matmul (no amx_bf16/avx512_bf16)")
    speedup = probe()
    dtype = torch.bfloat16 if speedup > BF16_MIN_SPEEDUP else torch.float32
    return ComputeChoice(dtype, f"cpu: measured bf16 product at {speedup:.2f}x fp32 speed")


def choose_cuda_dtype(capability: tuple[int, int] | None) -> ComputeChoice:
    """The CUDA decision from the compute capability (None: unknown, e.g. no GPU in this process)."""
    if capability is None:
        return ComputeChoice(torch.bfloat16, "cuda: bf16 (capability unknown)")
    if capability >= (8, 0):
        return ComputeChoice(torch.bfloat16, f"cuda: bf16 tensor cores (sm_{capability[0]}{capability[1]})")
    return ComputeChoice(torch.float32, f"cuda: no bf16 tensor cores (sm_{capability[0]}{capability[1]})")


@functools.cache
def _hardware_choice(device_type: str, index: int | None) -> ComputeChoice:
    if device_type == "cpu":
        return choose_cpu_dtype(read_cpu_flags(), measure_bf16_speedup, torch.backends.mkldnn.is_available())
    if device_type == "cuda":
        cap = torch.cuda.get_device_capability(index) if torch.cuda.is_available() else None
        return choose_cuda_dtype(cap)
    return ComputeChoice(torch.float32, f"{device_type}: fp32 (no rule for this device type)")


def compute_choice(device: torch.device | str, capability: tuple[int, int] | None = None) -> ComputeChoice:
    """The default compute dtype for `device` and why: the env override, else the cached hardware decision;
    ``capability`` states a CUDA device's compute capability instead of asking the device."""
    device = torch.device(device)
    override = env_override()
    if override is not None:
        return ComputeChoice(override, f"set by {ENV_VAR}")
    if device.type == "cuda" and capability is not None:
        return choose_cuda_dtype(capability)
    return _hardware_choice(device.type, device.index)
