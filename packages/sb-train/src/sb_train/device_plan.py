"""The device plan: every decision the trainer takes from the device it runs on, made in one place.

:func:`plan_for` turns a device, the run's configuration and a few hardware facts into a frozen
:class:`DevicePlan`: autocast, compile, attention backend, expert implementation and its row alignment,
collective backend, gradient bucket size, pinned/non-blocking batch copies and the Muon compute dtype.
The hardware facts (:class:`HardwareFacts`) are inputs, probed on this machine when left out, so the plan of a
CUDA device can be computed, printed and tested on a CPU-only machine (docs/design/training.md, device plan).
Where a library keeps its own default for library users (sb-model's attention and expert choice, sb-data's
pinned memory, sb-muon's compute dtype), the plan calls that same rule with the facts stated.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from sb_data.loader import default_pin_memory
from sb_model import GPTConfig
from sb_model.attention_masks import use_flex_attention
from sb_model.bank.experts import expert_impl_for, probe_cpu_grouped_mm
from sb_train.config import TrainConfig
from sb_train.distributed import GRAD_BUCKET_BYTES, collective_backend
from sb_train.optimizer import muon_compute_dtype

__all__ = ["PARAM_DTYPE", "DevicePlan", "HardwareFacts", "plan_for"]

#: the trainer keeps fp32 master parameters (autocast runs the products in bf16)
PARAM_DTYPE = torch.float32
# sb-model's internal names of the expert implementations -> BankConfig.expert_impl values
_EXPERT_IMPL_NAMES = {"grouped": "grouped_mm", "blocked": "blocked_bmm", "cpu_parallel": "cpu_parallel"}


@dataclass(frozen=True)
class HardwareFacts:
    """What the plan needs to know about the machine beyond the device type. None: ask this machine."""

    cuda_capability: tuple[int, int] | None = None  # (major, minor) of the CUDA device
    cpu_parallel_experts: bool | None = None  # the CPU expert kernel pays (several threads, usable OpenMP)
    cpu_grouped_mm: bool | None = None  # grouped_mm runs fp32 forward and backward on this CPU
    muon_dtype: torch.dtype | None = None  # sb-muon's hardware choice for this device (used on "auto")


@dataclass(frozen=True)
class DevicePlan:
    """Every device-dependent decision of a run; the trainer, the loaders and the GPU check apply it."""

    device: str  # e.g. "cuda:0", "cpu"
    world_size: int
    capability: tuple[int, int] | None  # the CUDA compute capability the plan assumed (None: unknown / CPU)
    autocast_dtype: torch.dtype | None  # dtype of the forward's autocast; None: no autocast
    compile: bool
    compile_mode: str | None  # torch.compile's mode (None: its default)
    compile_dynamic: bool
    compile_fullgraph: bool
    attention: str  # "flex" or "sdpa" (train and evaluation forwards)
    expert_impl: str  # BankConfig.expert_impl: "grouped_mm", "blocked_bmm" or "cpu_parallel"
    group_align: int  # rows of each expert group padded to a multiple of this
    collective_backend: str  # "nccl" or "gloo" (used when world_size > 1)
    grad_bucket_bytes: int  # the gradient all-reduce's flat bucket limit
    pin_memory: bool  # batches staged in pinned host memory
    non_blocking: bool  # host-to-device batch copies do not wait (only pinned memory allows it)
    param_dtype: torch.dtype  # master parameters
    muon_compute_dtype: torch.dtype  # Newton-Schulz / power-iteration products

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def compile_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``torch.compile``."""
        return {"mode": self.compile_mode, "dynamic": self.compile_dynamic,
                "fullgraph": self.compile_fullgraph}

    def compiled(self, model: torch.nn.Module) -> Any:
        """``model`` compiled as planned, or the model itself when compile is off."""
        return torch.compile(model, **self.compile_kwargs()) if self.compile else model

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast context (a null context when the plan has none)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def model_config(self, model: GPTConfig) -> GPTConfig:
        """``model`` with the planned attention backend, expert implementation and row alignment written in
        (the config the trainer builds its GPT from; run.json keeps the configured values)."""
        bank = dataclasses.replace(model.bank, expert_impl=self.expert_impl, group_align=self.group_align)
        return dataclasses.replace(model, attention=self.attention, bank=bank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (dtypes by name), as run.json's ``device_plan`` (docs/log-format.md §2)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.dtype):
                value = str(value).removeprefix("torch.")
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def describe(self) -> str:
        """One line for the start banner."""
        d = self.to_dict()
        compiled = (f"compile(mode={d['compile_mode']}, dynamic={d['compile_dynamic']}, "
                    f"fullgraph={d['compile_fullgraph']})" if self.compile else "eager")
        cap = f" sm_{self.capability[0]}{self.capability[1]}" if self.capability else ""
        return (f"device plan: {self.device}{cap} x{self.world_size}, autocast "
                f"{d['autocast_dtype'] or 'off'}, {compiled}, attention {self.attention}, experts "
                f"{self.expert_impl} (align {self.group_align}), {self.collective_backend} buckets "
                f"{self.grad_bucket_bytes // 2**20} MiB, pinned {self.pin_memory}, non-blocking "
                f"{self.non_blocking}, params {d['param_dtype']}, muon {d['muon_compute_dtype']}")


def plan_for(device: torch.device | str, config: TrainConfig, *, world_size: int = 1,
             facts: HardwareFacts | None = None) -> DevicePlan:
    """The plan for ranks on ``device`` running ``config``. ``facts`` states the hardware (each None is
    probed on this machine: the CUDA capability only when a GPU is present, the CPU facts only for a CPU)."""
    device = torch.device(device)
    facts = _probe_missing(device, facts or HardwareFacts())
    run, mcfg = config.run, config.model
    on_cuda = device.type == "cuda"
    autocast = torch.bfloat16 if run.autocast == "bf16" or (run.autocast == "auto" and on_cuda) else None
    with torch.enable_grad():  # the training rule (FlexAttention has no CPU backward)
        flex = use_flex_attention(mcfg.attention, device)
    impl, align = expert_impl_for(mcfg.bank, device, PARAM_DTYPE, capability=facts.cuda_capability,
                                  cpu_parallel_pays=facts.cpu_parallel_experts,
                                  cpu_grouped=facts.cpu_grouped_mm)
    pin = default_pin_memory(device)
    if config.optim.muon_compute_dtype == "auto" and facts.muon_dtype is not None:
        muon_dtype = facts.muon_dtype
    else:
        muon_dtype = muon_compute_dtype(config.optim, device, facts.cuda_capability)
    return DevicePlan(
        device=str(device),
        world_size=world_size,
        capability=facts.cuda_capability if on_cuda else None,
        autocast_dtype=autocast,
        compile=run.compile == "on" or (run.compile == "auto" and on_cuda),
        compile_mode=None,
        compile_dynamic=False,  # shapes are fixed per run; schedule values are tensors (no recompiles)
        compile_fullgraph=False,
        attention="flex" if flex else "sdpa",
        expert_impl=_EXPERT_IMPL_NAMES[impl],
        group_align=align,
        collective_backend=collective_backend(device),
        grad_bucket_bytes=GRAD_BUCKET_BYTES,
        pin_memory=pin,
        non_blocking=pin,  # sb_data.transfer copies non-blocking exactly when the staging buffer is pinned
        param_dtype=PARAM_DTYPE,
        muon_compute_dtype=muon_dtype,
    )


def _probe_missing(device: torch.device, facts: HardwareFacts) -> HardwareFacts:
    """``facts`` with the unknowns this device needs filled in from this machine."""
    if device.type == "cuda" and facts.cuda_capability is None and torch.cuda.is_available():
        facts = dataclasses.replace(facts, cuda_capability=torch.cuda.get_device_capability(device))
    if device.type == "cpu" and facts.cpu_grouped_mm is None:
        facts = dataclasses.replace(facts, cpu_grouped_mm=probe_cpu_grouped_mm()[PARAM_DTYPE])
    return facts
