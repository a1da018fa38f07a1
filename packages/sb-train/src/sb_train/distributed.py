"""Process setup (torchrun or a single process) and the gradient all-reduce.

Unlike the reference (docs/design/deviations.md D5), the all-reduce is the same on every rank: every trainable
parameter, in a fixed order, packed into flat buckets. A gradient that is ``None`` on this rank (e.g. the
routers while only one expert is live) travels as zeros, and a one-element flag per parameter travels with it;
after the reduce, a parameter whose gradient was ``None`` on *every* rank gets ``None`` back (so optimizers
skip it exactly as in a single process), and one that was ``None`` only on some ranks keeps the averaged
gradient. No host sync: the flags are compared on the device, and ``None`` is restored from this rank's own
view (the model's structure makes the two agree; :meth:`GradReducer.check` verifies it at logging steps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sb_train.errors import RunError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: the gradient all-reduce's bucket limit (fp32 bytes per flat bucket), on every backend
GRAD_BUCKET_BYTES = 32 * 2**20


def collective_backend(device: torch.device) -> str:
    """The process-group backend for ranks on ``device``: NCCL on CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def launch_world_size() -> int:
    """The number of processes this launch has (torchrun's WORLD_SIZE; 1 without torchrun)."""
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """run.device as a torch device: "auto" is cuda:<LOCAL_RANK> when CUDA is available, else cpu; a CUDA
    device without an index gets the local rank's. A CUDA device this machine lacks is a RunError."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"run.device={str(device)!r} but this machine has no usable CUDA GPU (torch.cuda."
                           "is_available() is False); use --set run.device=cpu (or run.device=auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RunError(f"run.device={str(device)!r} names GPU {dev.index} but this machine has "
                           f"{torch.cuda.device_count()} (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev


def setup_distributed(device: str | torch.device = "auto", *, backend: str | None = None) -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a single process needs none of them) and start the
    process group with ``backend`` (default: :func:`collective_backend`; NCCL is bound to the device). An
    existing process group is reused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RunError(
                    f"WORLD_SIZE={world} but {var} is not set; start with "
                    "`torchrun --nproc_per_node=N -m sb_train.cli ...` (or `torchrun ... $(which sb-train)`)"
                )
        backend = backend or collective_backend(dev)
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world, local_rank, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def broadcast_parameters(model: nn.Module) -> None:
    """Make every rank start from rank 0's parameters and persistent buffers."""
    if not dist.is_initialized():
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)


class GradReducer:
    """Averages the gradients of ``params`` over ranks in flat fp32 buckets of at most ``bucket_bytes``
    (a single larger parameter gets a bucket of its own).

    ``launch()`` starts the asynchronous all-reduces (right after the last backward); ``finish()`` waits,
    divides by the world size and writes the results back into ``.grad``. With one process both are no-ops.
    """

    def __init__(self, params: list[nn.Parameter], world_size: int,
                 bucket_bytes: int = GRAD_BUCKET_BYTES) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.world_size = world_size
        self._pending: list[tuple[list[int], Tensor, dist.Work]] = []
        self._buckets: list[list[int]] = []
        self.bucket_bytes = limit = bucket_bytes
        current: list[int] = []
        size = 0
        for i, p in enumerate(self.params):
            nbytes = p.numel() * 4
            if current and size + nbytes > limit:
                self._buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        if current:
            self._buckets.append(current)
        self._was_none: list[bool] = [False] * len(self.params)
        self._flags: Tensor | None = None
        self._flags_work: dist.Work | None = None

    def launch(self) -> None:
        if self.world_size <= 1:
            return
        self._pending.clear()
        has_grad: list[float] = []
        for bucket in self._buckets:
            parts = []
            for i in bucket:
                p = self.params[i]
                self._was_none[i] = p.grad is None
                g = torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.float()
                parts.append(g.reshape(-1))
                has_grad.append(float(p.grad is not None))
            flat = torch.cat(parts)
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
            self._pending.append((bucket, flat, work))
        flags = torch.tensor(has_grad, device=self.params[0].device)  # one host-to-device copy
        self._flags_work = dist.all_reduce(flags, op=dist.ReduceOp.SUM, async_op=True)
        self._flags = flags

    @torch.no_grad()
    def finish(self) -> None:
        if self.world_size <= 1:
            return
        for bucket, flat, work in self._pending:
            work.wait()
            flat.div_(self.world_size)
            at = 0
            for i in bucket:
                p = self.params[i]
                n = p.numel()
                g = flat[at : at + n].view_as(p)
                at += n
                if self._was_none[i]:
                    p.grad = None  # None here; check() verifies that it was None on every rank
                elif p.grad.dtype == torch.float32:
                    p.grad.copy_(g)
                else:
                    p.grad.copy_(g.to(p.grad.dtype))
        self._pending.clear()
        if self._flags_work is not None:
            self._flags_work.wait()
            self._flags_work = None

    def check(self) -> None:
        """Raise if a parameter had a gradient on some ranks but not on others (one host copy; call it at
        logging steps only)."""
        if self._flags is None:
            return
        counts = self._flags.cpu().tolist()
        bad = [i for i, c in enumerate(counts) if 0 < c < self.world_size and self._was_none[i]]
        if bad:
            shapes = ", ".join(str(tuple(self.params[i].shape)) for i in bad[:5])
            raise RuntimeError(
                f"{len(bad)} parameter(s) got a gradient on some ranks but not on this one "
                f"(shapes {shapes}); "
                "the ranks ran different code paths — check that every rank uses the same schedule values"
            )
