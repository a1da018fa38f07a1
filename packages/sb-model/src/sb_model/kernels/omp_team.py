"""Run Python tasks on PyTorch's own OpenMP threads (the task runner under the expert-parallel CPU FFN).

PyTorch's CPU kernels run on one OpenMP thread team. A second pool of threads (``ThreadPoolExecutor``) that
runs GEMMs beside it loses up to a core to that team: after every parallel region libgomp's idle threads
spin for a while before they sleep, and they spin on the cores the pool wants (measured: +15% on the bank's
expert products). So the tasks run *inside* an OpenMP parallel region of the same runtime instead, through
libgomp's ``GOMP_parallel`` entry point called with ``ctypes``: every thread of the team (the calling thread
is thread 0) pulls tasks from a shared list until it is empty. Inside the region ATen and MKL see that they
are in a parallel region and run each op on the calling thread only, so a task's GEMM is a one-core GEMM;
ATen releases the GIL inside each op, so the tasks' products overlap.

Where this cannot work (no libgomp in the process — macOS, Windows, builds with another threading backend —
or a failed self-test), :func:`openmp_team_available` is False and callers use their portable path.
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_STATE: dict[str, object] = {}  # once probed: "lib" (ctypes.CDLL | None) and "ok" (bool)


def _loaded_libgomp() -> str | None:
    """Path of the libgomp that this process has loaded (the one PyTorch's kernels use), or None."""
    if not sys.platform.startswith("linux"):
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    paths = sorted(set(re.findall(r"(/\S*/libgomp[^/\s]*\.so[^/\s]*)", maps)))
    return paths[0] if len(paths) == 1 else None


def _open_runtime() -> ctypes.CDLL | None:
    path = _loaded_libgomp()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # the already-loaded library: dlopen returns the same instance
        lib.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
        lib.omp_get_thread_num.restype = ctypes.c_int
        lib.omp_get_thread_num.argtypes = []
    except (OSError, AttributeError):
        return None
    return lib


def _self_test(lib: ctypes.CDLL) -> bool:
    """A 2-thread region runs the callback on two distinct threads, and ATen ops inside it work."""
    seen: list[int] = []
    results: list[bool] = []
    lock = threading.Lock()

    def body(_: object) -> None:
        try:
            a = torch.arange(64.0).view(8, 8)
            ok = bool(torch.equal(a @ a.t(), torch.mm(a, a.t())))
            with lock:
                seen.append(lib.omp_get_thread_num())
                results.append(ok)
        except Exception:
            with lock:
                results.append(False)

    callback = _CALLBACK(body)
    lib.GOMP_parallel(callback, None, 2, 0)
    return sorted(seen) == [0, 1] and all(results) and len(results) == 2


def _runtime() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        lib = _open_runtime()
        ok = lib is not None and _self_test(lib)
        _STATE.update(lib=lib if ok else None, ok=ok)
    return _STATE["lib"]  # type: ignore[return-value]


def openmp_team_available() -> bool:
    """True if :func:`run_on_openmp_team` can use PyTorch's OpenMP team in this process (probed once, on
    the first call: call it eagerly before ``torch.compile`` traces code that asks)."""
    if "ok" not in _STATE:
        _runtime()
    return bool(_STATE["ok"])


def run_on_openmp_team(tasks: Sequence[T], fn: Callable[[T], None]) -> None:
    """Call ``fn(task)`` for every task, spread over ``torch.get_num_threads()`` OpenMP threads (tasks are
    taken in order, so put the largest first). Each call runs under ``torch.no_grad()`` (and in inference
    mode when the caller is). Runs the tasks inline when there is one thread, one task, or no usable team.
    The first exception raised by a task is re-raised here after the region ends."""
    threads = min(torch.get_num_threads(), len(tasks))
    lib = _runtime() if threads > 1 else None
    inference = torch.is_inference_mode_enabled()
    if lib is None:
        with torch.no_grad():
            for t in tasks:
                fn(t)
        return
    queue = list(reversed(tasks))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def body(_: object) -> None:
        try:
            with torch.inference_mode(inference), torch.no_grad():  # grad mode is per thread
                while True:
                    with lock:
                        if not queue or errors:
                            return
                        task = queue.pop()
                    fn(task)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    callback = _CALLBACK(body)
    lib.GOMP_parallel(callback, None, threads, 0)
    if errors:
        raise errors[0]
