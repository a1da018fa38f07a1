"""sb-muon: the Muon optimizer for PyTorch.

    from sb_muon import Muon, MuonAdamW, orthogonalize, split_muon_params
"""

from .coefficients import POLAR_EXPRESS, QUINTIC, TUNED5
from .hardware import compute_choice
from .hybrid import MuonAdamW
from .momentum import MomentumWarmup, momentum_warmup
from .muon import Muon
from .orthogonalize import DEFAULT_METHOD, METHODS, default_compute_dtype, orthogonalize, polar_factor
from .params import output_layer, split_muon_params
from .scaling import LR_SCALES, lr_scale_factor

__all__ = [
    "DEFAULT_METHOD",
    "LR_SCALES",
    "METHODS",
    "POLAR_EXPRESS",
    "QUINTIC",
    "TUNED5",
    "MomentumWarmup",
    "Muon",
    "MuonAdamW",
    "compute_choice",
    "default_compute_dtype",
    "lr_scale_factor",
    "momentum_warmup",
    "orthogonalize",
    "output_layer",
    "polar_factor",
    "split_muon_params",
]
__version__ = "0.1.0"
