"""Graceful stop: turn SIGTERM/SIGINT into a flag the training loop polls.

Inside ``with StopSignal() as stop:`` a SIGTERM (sent by a scheduler or by torchrun when it shuts a job
down) or a SIGINT (Ctrl-C) no longer kills the process; it sets ``stop.requested``. The trainer checks the
flag after each step, saves a checkpoint and exits cleanly. A second SIGINT while a stop is already
requested raises KeyboardInterrupt, so a user can still force-quit. The previous handlers come back when
the block ends.

In a distributed run every rank must take the same decision, or the ranks that stop leave the others
waiting in a collective forever: call `any_rank_requested` (an all-reduce MAX) every K steps, the same
steps on every rank, and stop when it returns True.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignal", "any_rank_requested"]

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


class StopSignal:
    """Context manager that records SIGTERM/SIGINT instead of dying (see the module docstring).

    Attributes:
        requested: True once one of the signals arrived.
        signal_name: the first signal's name ("SIGTERM", "SIGINT"), or None.
    """

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
        *,
        announce: bool = True,
    ) -> None:
        """`announce` writes one line to stderr when a stop is requested (what will happen next)."""
        self.signals = tuple(signals)
        self.announce = announce
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopSignal must be entered in the main thread (signals are delivered there)")
        if self._previous:
            raise RuntimeError("this StopSignal is already active; it cannot be entered twice")
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            # None means the previous handler was installed from C; the default is the safe fallback.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(f"second {name} while a stop was already requested")
            return
        self.requested = True
        self.signal_name = name
        if self.announce:
            # os.write, not print: a handler may run while the main code is inside a print to stderr.
            message = (
                f"[pid {os.getpid()}] {name} received: finishing the current step, then saving a checkpoint "
                "and exiting (press Ctrl-C again to quit at once)\n"
            )
            os.write(2, message.encode())


def any_rank_requested(flag: bool, *, group: Any = None) -> bool:
    """True when `flag` is True on any rank (all-reduce MAX); just `flag` without torch.distributed.

    A collective: when torch.distributed is initialised, every rank of `group` must call it at the same
    step. With the NCCL backend the reduction runs on the current CUDA device, otherwise on the CPU.
    """
    import torch  # deferred: the signal handling above is usable without importing torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())
