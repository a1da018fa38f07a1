"""The trainer's logs: the run directory (CSV tables and status through sb-runlog), W&B, the console line.

=================  ==============================================================================
``run_logger``     :class:`RunLogger`: run.json, scalars.csv, router.csv, status.json, W&B
``columns``        the scalars.csv / router.csv headers; bank statistic -> router.csv column
``report_rows``    a RoutingReport as router.csv rows and summary scalars
``status_keeper``  best/final validation and when status.json is due
``wandb_log``      W&B settings, payload of a step, failure handling
``console``        rank 0's progress and validation lines (:class:`ProgressPrinter`)
=================  ==============================================================================
"""

from .console import ProgressPrinter
from .run_logger import RunLogger
from .wandb_log import WandbSettings

__all__ = ["ProgressPrinter", "RunLogger", "WandbSettings"]
