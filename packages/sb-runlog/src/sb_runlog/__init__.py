"""sb-runlog: the SwitchBank run-directory log format (docs/log-format.md) in one standard-library package.

File names and segments (:mod:`.layout`), the declared columns (:mod:`.columns`), the header rules
(:mod:`.header_check`), the one writer (:class:`RunLogWriter` on :mod:`.csv_table`, :mod:`.csv_fields`,
:mod:`.json_files`, :mod:`.run_header`, :mod:`.status`), the W&B names (:mod:`.wandb_names`) and the
router-health thresholds (:mod:`.health_thresholds`), the domain-specialisation score
(:mod:`.specialisation`) and the sweep manifest (:mod:`.sweep_manifest`).
"""

from .columns import (
    DOMAINS,
    EXPERT_FAMILIES,
    ROUTER,
    SCALARS,
    TABLES,
    ColumnType,
    TableSpec,
    expert_column,
    expert_columns,
)
from .csv_fields import format_value, typed_row, typed_value
from .csv_table import CsvAppender, complete_end, cut_partial_last_line, open_table, read_header
from .errors import LogFormatError
from .header_check import check_column_name, check_header, column_types, expert_counts
from .json_files import read_json_object, utc_now, write_json_atomic
from .layout import FORMAT_NAME, FORMAT_VERSION, RUN_FILE, STATUS_FILE, segment_files, segment_name
from .run_header import config_hash, new_run_header, read_run_header
from .specialisation import domain_expert_nmi
from .status import STATES, read_status, write_status
from .sweep_manifest import (
    SWEEP_FILE,
    SWEEPS_DIR,
    find_sweep,
    list_sweeps,
    read_sweep_manifest,
    run_dir_of,
    sweep_dir,
    write_sweep_manifest,
)
from .writer import RunLogWriter

__version__ = "0.1.0"

__all__ = [
    "DOMAINS",
    "EXPERT_FAMILIES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ROUTER",
    "RUN_FILE",
    "SCALARS",
    "STATES",
    "STATUS_FILE",
    "SWEEPS_DIR",
    "SWEEP_FILE",
    "TABLES",
    "ColumnType",
    "CsvAppender",
    "LogFormatError",
    "RunLogWriter",
    "TableSpec",
    "check_column_name",
    "check_header",
    "column_types",
    "complete_end",
    "config_hash",
    "cut_partial_last_line",
    "domain_expert_nmi",
    "expert_column",
    "expert_columns",
    "expert_counts",
    "find_sweep",
    "format_value",
    "list_sweeps",
    "new_run_header",
    "open_table",
    "read_header",
    "read_json_object",
    "read_run_header",
    "read_status",
    "read_sweep_manifest",
    "run_dir_of",
    "segment_files",
    "segment_name",
    "sweep_dir",
    "typed_row",
    "typed_value",
    "utc_now",
    "write_json_atomic",
    "write_status",
    "write_sweep_manifest",
]
