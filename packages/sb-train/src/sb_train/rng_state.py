"""Capture and restore every global random number generator a training process draws from.

`capture_rng_state()` returns a dict that covers Python's `random`, NumPy's global RNG, the torch CPU
generator and, when CUDA is available, the generator of every visible CUDA device. The dict holds only
plain Python values and tensors, so a checkpoint that stores it can be read back with
``torch.load(weights_only=True)``. `restore_rng_state()` puts all of them back, so the draws that follow
are exactly the ones that followed the capture.

Generators that a component owns itself (a `torch.Generator` inside a module or optimizer) are not
global state: that component's own `state_dict` must carry them.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_STATE_VERSION", "capture_rng_state", "restore_rng_state"]

RNG_STATE_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the global RNGs: keys ``python``, ``numpy``, ``torch`` and (with CUDA) ``cuda``."""
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "version": RNG_STATE_VERSION,
        "python": {
            "version": py_version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by `capture_rng_state` (each key that is present).

    CUDA states are restored on the devices that exist; a different device count is reported with a
    warning (the devices beyond the smaller count keep their current state). A state captured with CUDA
    restores quietly on a CPU-only machine, where no CUDA generator is used.
    """
    version = state.get("version")
    if version != RNG_STATE_VERSION:
        raise ValueError(
            f"RNG state version {version!r} is not supported (expected {RNG_STATE_VERSION}); "
            "it was not written by sb_train.rng_state.capture_rng_state"
        )
    if "python" in state:
        py = state["python"]
        internal = tuple(int(v) for v in py["internal"].tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if "numpy" in state:
        npy = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": npy["bit_generator"],
                "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": int(npy["pos"])},
                "has_gauss": int(npy["has_gauss"]),
                "gauss": float(npy["gauss"]),
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            warnings.warn(
                f"the RNG state holds {len(cuda_states)} CUDA generator(s), {count} device(s) are visible; "
                f"restoring the first {min(count, len(cuda_states))}",
                RuntimeWarning,
                stacklevel=2,
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
