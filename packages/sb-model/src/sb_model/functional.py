"""Parameter-free pieces shared by the layers: RMSNorm, ReLU² and the reference's linear init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor) -> Tensor:
    """RMSNorm over the last dimension with no learnable weight (the reference's ``norm``)."""
    return F.rms_norm(x, (x.shape[-1],))


def relu_squared(h: Tensor) -> Tensor:
    return torch.relu(h).square()


def init_linear_(w: Tensor, fan_in: int | None = None) -> Tensor:
    """The reference's init: U(-b, b) with b = sqrt(3) * 0.5 / sqrt(fan_in), fan_in = last dim by default."""
    fan = w.shape[-1] if fan_in is None else fan_in
    bound = math.sqrt(3.0) * 0.5 / math.sqrt(fan)
    with torch.no_grad():
        return w.uniform_(-bound, bound)
