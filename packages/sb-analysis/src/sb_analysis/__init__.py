"""sb-analysis: SwitchBank run logs (CSV run directories, W&B runs) in DuckDB.

SQL over runs (through one read-only sandbox, sandbox.py), side-by-side comparisons and router-health
findings; every Python answer is a polars DataFrame. The run-directory format (docs/log-format.md) is
read through sb-runlog. Synthetic runs for tests and demos: ``sb_analysis.synthetic``.
"""

from .api import RunDB
from .compare import DEFAULT_TARGET_LOSS, compare_runs, side_by_side
from .db import DEFAULT_DB
from .health import findings
from .ingest import IngestReport, RunResult, ingest
from .sandbox import (
    DatabaseBusyError,
    Limits,
    QueryResult,
    QueryTimeout,
    RefusedStatement,
    check_statements,
    connect_read_only,
    run_query,
)
from .wandb_ingest import WandbReadError, history_to_frames, read_api_run, read_offline_run

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_TARGET_LOSS",
    "DatabaseBusyError",
    "IngestReport",
    "Limits",
    "QueryResult",
    "QueryTimeout",
    "RefusedStatement",
    "RunDB",
    "RunResult",
    "WandbReadError",
    "check_statements",
    "compare_runs",
    "connect_read_only",
    "findings",
    "history_to_frames",
    "ingest",
    "read_api_run",
    "read_offline_run",
    "run_query",
    "side_by_side",
]
