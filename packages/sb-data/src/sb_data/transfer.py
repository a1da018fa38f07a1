"""Moving a batch of raw host tokens to the device: one staging buffer, one copy, widened on the device."""

from __future__ import annotations

import numpy as np
import torch


def transfer_and_widen(
    inputs: np.ndarray, targets: np.ndarray, device: torch.device, *, pin_memory: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move raw uint16/uint32 tokens to ``device`` as (int32 inputs, int64 targets).

    The narrow tokens travel as signed ints of the same width (every torch version can copy those),
    through one staging buffer (pinned, and copied non-blocking, when ``pin_memory``); they are widened
    on the device, where masking undoes the sign extension.
    """
    itemsize = inputs.dtype.itemsize
    signed, torch_signed = (np.int16, torch.int16) if itemsize == 2 else (np.int32, torch.int32)
    mask = (1 << (8 * itemsize)) - 1
    n = inputs.size
    staging = torch.empty(2 * n, dtype=torch_signed, pin_memory=pin_memory)
    host = staging.numpy()
    host[:n] = inputs.view(signed)
    host[n:] = targets.view(signed)
    moved = staging.to(device, non_blocking=pin_memory)
    wide = moved.to(torch.int64).bitwise_and_(mask)
    return wide[:n].to(torch.int32), wide[n:]
