"""SwitchBank model: a GPT whose layers share one bank of ReLU² experts, each layer with its own router.

The public face is small; everything else is imported from its module (``sb_model.bank.router``, ...).
"""

from sb_model.bank.bank import SharedExpertBank
from sb_model.bank.config import BankConfig
from sb_model.bank.metrics import RouterMetrics, RoutingReport
from sb_model.bank.trace import LayerChoices, RoutingTrace
from sb_model.generation import generate
from sb_model.gpt import GPT, GPTOutput
from sb_model.gpt_config import GPTConfig
from sb_model.schedule_tensors import RoutingSchedule

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "BankConfig",
    "GPTConfig",
    "GPTOutput",
    "LayerChoices",
    "RouterMetrics",
    "RoutingReport",
    "RoutingSchedule",
    "RoutingTrace",
    "SharedExpertBank",
    "generate",
]
