"""The record model's forward on a fake CUDA device, on a machine without a GPU.

torch's FakeTensorMode runs every op's shape/dtype/device rule on tensors that have a device but no data, so
the record model (282,395,148 parameters, 12,288 tokens) is built on "cuda" from the device plan's config and
runs its training forward under the plan's bf16 autocast in seconds and no memory. What it catches:

- device mismatches: an op mixing a CUDA tensor with a CPU tensor (other than a 0-d scalar) raises, as on a
  GPU; a real (non-fake) tensor reaching the forward raises too (``allow_non_fake_inputs=False``);
- dtype mismatches: fake kernels check shapes and devices but not every dtype rule (a bf16 @ fp32 product
  passes them, a GPU refuses it), so :class:`ForwardGuard` applies the GPU kernels' rule itself: the
  floating-point operands of a matrix product or of an indexed accumulate (index_add_, index_put_,
  scatter_add_) share one dtype;
- host syncs: :class:`ForwardGuard` refuses reading a value (``.item()``, ``bool(t)``), ops whose output
  shape depends on data (``nonzero``, ``unique``, boolean indexing) and copies from the device to the host.

Not covered: the backward. The autograd engine asks the CUDA runtime for the device's primary context even
for fake tensors, which fails without a driver ("hasPrimaryContext expects a valid device index"), so the
backward runs only on real devices (the CPU tests and scripts/gpu_check). FlexAttention is not run here
either: the forward uses SDPA with the dense mask (the plan's CUDA attention is Flex; see the plan's test).
``torch.autocast("cuda")`` switches itself off without a CUDA runtime, so :func:`fake_cuda_autocast` sets the
same autocast state through torch's lower-level switches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import sb_model.bank.experts as experts
from sb_model import GPT
from sb_train.config_loading import load_config
from sb_train.device_plan import DevicePlan, HardwareFacts, plan_for
from sb_train.schedules.apply import set_model_schedule

RECORD_PARAMS = 282_395_148
MATMULS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "_grouped_mm", "grouped_mm",
           "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
           "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"}
ACCUMULATES = {"index_add", "index_add_", "index_put", "index_put_", "scatter_add", "scatter_add_",
               "_index_put_impl_"}


class HostSyncError(AssertionError):
    """An op that would make the host wait for the GPU ran in a checked forward."""


class DtypeMismatchError(AssertionError):
    """Operands of one product or accumulate have different floating-point dtypes (GPU kernels refuse it)."""


class ForwardGuard(TorchDispatchMode):
    """Refuses host syncs and mixed-dtype products (see the module docstring); records each matrix product's
    output dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul_dtypes: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostSyncError(f"{func} reads a device value on the host (.item(), bool(tensor), float())")
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if name in MATMULS or name in ACCUMULATES:
            dtypes = {t.dtype for t in inputs if t.is_floating_point()}
            if len(dtypes) > 1:
                raise DtypeMismatchError(f"{func} mixes {sorted(map(str, dtypes))}")
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as exc:  # fake mode cannot know
            raise HostSyncError(f"{func}: its output depends on the data (the host waits for it)") from exc
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cuda" for t in inputs) and any(t.device.type == "cpu" for t in outputs):
            raise HostSyncError(f"{func} copies from the device to the host")
        if name in MATMULS and outputs:
            self.matmul_dtypes.setdefault(name, set()).add(outputs[0].dtype)
        return out


@contextlib.contextmanager
def fake_cuda_autocast(dtype: torch.dtype | None, *, off: bool = False) -> Iterator[None]:
    """What ``torch.autocast("cuda", dtype)`` sets (``off``: what ``enabled=False`` sets; a None dtype leaves
    the state alone), without its check for a CUDA runtime."""
    if dtype is None and not off:
        yield
        return
    was_on, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", not off)
    torch.set_autocast_dtype("cuda", dtype or was_dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", was_on)
        torch.set_autocast_dtype("cuda", was_dtype)
        torch.clear_autocast_cache()


@contextlib.contextmanager
def fake_cuda(plan: DevicePlan, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake tensors (nothing real may enter) for ``plan``'s CUDA device; the bank's expert choice answers for
    the plan's compute capability (it would ask the absent GPU). The CPU grouped_mm probe runs first, on real
    tensors: run under fake ones it would cache a wrong answer for the rest of the process."""
    experts.probe_cpu_grouped_mm()
    if plan.capability is not None:
        monkeypatch.setattr(experts, "expert_impl_for",
                            functools.partial(experts.expert_impl_for, capability=plan.capability))
    with FakeTensorMode(allow_non_fake_inputs=False):
        yield


def checked_forward(plan: DevicePlan, module: nn.Module, *args, **kwargs) -> tuple[object, ForwardGuard]:
    """``module(*args, **kwargs)`` under the plan's autocast and a :class:`ForwardGuard`: (output, guard).

    SDPA on fake CUDA tensors takes torch's math backend, which upcasts bf16 to fp32 unless told otherwise;
    a GPU's fused SDPA kernels compute in the input dtype, so the math backend is told to do the same."""
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with ForwardGuard() as guard, fake_cuda_autocast(plan.autocast_dtype):
            return module(*args, **kwargs), guard
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def _record_plan(capability: tuple[int, int]) -> tuple[DevicePlan, object]:
    cfg = load_config("record", overrides=['model.attention="sdpa"'])
    facts = HardwareFacts(cuda_capability=capability)
    return plan_for(torch.device("cuda:0"), cfg, world_size=8, facts=facts), cfg


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)], ids=["sm90-grouped_mm", "sm80-blocked_bmm"])
def test_record_forward_on_fake_cuda(capability, monkeypatch):
    """The training forward of the record model at its real size and micro-batch, every expert live, as the
    plan builds it: loss on cuda in fp32, every matrix product in bf16, no host sync, no device mix-up.
    About 4 s of CPU per forward (a fake forward costs its op count, not its FLOPs). Before sb-model cast
    grouped_mm's operands itself, the sm_90 variant failed here: autocast has no rule for grouped_mm, so
    the expert FFNs ran in fp32."""
    plan, cfg = _record_plan(capability)
    assert plan.autocast_dtype == torch.bfloat16
    assert plan.expert_impl == ("grouped_mm" if capability >= (9, 0) else "blocked_bmm")
    sched = cfg.schedule
    step = max(s for s, _ in sched.expert_activation_schedule)  # every expert live, Gumbel on
    mcfg = cfg.model
    values = sched.at(step, num_experts=mcfg.bank.num_experts, max_window_tokens=mcfg.max_window_tokens,
                      block_size=mcfg.block_size)
    tokens = cfg.data.tokens_per_rank
    with fake_cuda(plan, monkeypatch):
        model = GPT(plan.model_config(cfg.model), device=torch.device(plan.device))
        assert sum(p.numel() for p in model.parameters()) == RECORD_PARAMS
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        set_model_schedule(model, values)
        model.bank.maybe_init_adapters(model.routing_schedule.active_mask)
        model.train()
        idx = torch.randint(0, cfg.model.vocab_size, (1, tokens), device=plan.device, dtype=torch.int32)
        tgt = torch.randint(0, cfg.model.vocab_size, (1, tokens), device=plan.device)
        out, guard = checked_forward(plan, model, idx, tgt)
    for loss in (out.loss, out.ce_loss, out.aux_loss):
        assert loss.device.type == "cuda" and loss.dtype == torch.float32 and loss.shape == ()
    expected_products = {"_grouped_mm"} if capability >= (9, 0) else {"bmm"}
    assert expected_products <= set(guard.matmul_dtypes), guard.matmul_dtypes
    assert all(dtypes == {torch.bfloat16} for dtypes in guard.matmul_dtypes.values()), guard.matmul_dtypes


def test_record_eval_forward_returns_cuda_logits(monkeypatch):
    """The evaluation forward (no grad, logits asked for) at the validation length: fp32 logits on cuda."""
    plan, cfg = _record_plan((9, 0))
    seq = 1024  # logits are (T, vocab); a shorter validation sequence keeps the fake run quick
    with fake_cuda(plan, monkeypatch), torch.no_grad():
        model = GPT(plan.model_config(cfg.model), device=torch.device(plan.device)).eval()
        idx = torch.randint(0, cfg.model.vocab_size, (1, seq), device=plan.device, dtype=torch.int32)
        out, _ = checked_forward(plan, model, idx, return_logits=True)
    assert out.logits.device.type == "cuda" and out.logits.dtype == torch.float32
    assert out.logits.shape == (1, seq, cfg.model.vocab_size)


# ------------------------------------------------------------------ the checker catches what it should
class _Bug(nn.Module):
    def __init__(self, bug: str, device: str) -> None:
        super().__init__()
        self.bug = bug
        self.w = nn.Parameter(torch.randn(16, 16, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w
        if self.bug == "cpu tensor":
            y = y + torch.ones(16)  # created on the default device: the host
        elif self.bug == "item":
            y = y * y.abs().max().item()
        elif self.bug == "branch on a value":
            y = y if bool((y > 0).any()) else -y
        elif self.bug == "boolean index":
            y = y[y > 0]
        elif self.bug == "nonzero":
            y = y[:, torch.nonzero(y[0] > 0).flatten()]
        elif self.bug == "copy to host":
            y = y.cpu()
        elif self.bug == "dtype":
            rows = torch.zeros(4, 16, device=y.device)  # fp32 accumulator, bf16 rows (autocast)
            y = rows.index_add_(0, torch.zeros(y.shape[0], dtype=torch.long, device=y.device), y)
        elif self.bug == "product outside autocast":
            with fake_cuda_autocast(None, off=True):  # bf16 activations meet the fp32 weight
                y = y @ self.w
        return y


@pytest.mark.parametrize(("bug", "error", "match"), [
    ("cpu tensor", RuntimeError, "device"),
    ("item", HostSyncError, "on the host"),
    ("branch on a value", HostSyncError, "on the host"),
    ("boolean index", HostSyncError, "depends on the data"),
    ("nonzero", HostSyncError, "depends on the data"),
    ("copy to host", HostSyncError, "device to the host"),
    ("dtype", DtypeMismatchError, "index_add.*bfloat16.*float32"),
    ("product outside autocast", DtypeMismatchError, "mm.*bfloat16.*float32"),
])
def test_the_checker_catches(bug, error, match, monkeypatch):
    plan, _ = _record_plan((9, 0))
    with fake_cuda(plan, monkeypatch):
        module = _Bug(bug, plan.device)
        x = torch.randn(8, 16, device=plan.device)
        with pytest.raises(error, match=match):
            checked_forward(plan, module, x)


def test_the_checker_passes_the_clean_module(monkeypatch):
    plan, _ = _record_plan((9, 0))
    with fake_cuda(plan, monkeypatch):
        y, guard = checked_forward(plan, _Bug("none", plan.device), torch.randn(8, 16, device=plan.device))
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16
    assert guard.matmul_dtypes == {"mm": {torch.bfloat16}}


def test_real_tensors_cannot_enter(monkeypatch):
    plan, _ = _record_plan((9, 0))
    real = torch.randn(8, 16)
    with fake_cuda(plan, monkeypatch):
        module = _Bug("none", plan.device)
        plan = dataclasses.replace(plan, autocast_dtype=None)  # autocast would refuse the mix first
        with pytest.raises(Exception, match=r"[Ff]ake"):
            checked_forward(plan, module, real)
