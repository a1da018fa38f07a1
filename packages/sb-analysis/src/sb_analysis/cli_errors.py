"""The top-level error handler of the sb-analysis and router-explorer commands: one line and an exit code.

Exit codes: 0 done; 1 the work failed (a file or database problem: missing, locked, unreadable, disk
full); 2 bad input (a refused or malformed SQL statement, an invalid value, an unknown run; argparse's
usage errors also exit 2); 130 interrupted. `--debug` or SB_DEBUG=1 re-raises for the full traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

import duckdb
import polars as pl
from sb_runlog import LogFormatError

from .sandbox import DatabaseBusyError, QueryTimeout, RefusedStatement
from .wandb_ingest import WandbReadError

DEBUG_ENV = "SB_DEBUG"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
_OS_HINTS = {
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOSPC: "disk full: free some space and run it again",
    errno.EROFS: "read-only file system: choose a writable location",
    errno.EEXIST: "already exists",
}
BAD_INPUT = (RefusedStatement, ValueError, KeyError)
FAILED = (OSError, DatabaseBusyError, QueryTimeout, LogFormatError, WandbReadError, duckdb.Error,
          pl.exceptions.PolarsError)


def debug_requested(argv_debug: bool = False) -> bool:
    """``--debug`` was given, or ``SB_DEBUG`` is set to something other than empty/0/false/no (the same rule
    as sb-train's and sb-data's CLIs)."""
    return argv_debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(err: BaseException) -> str:
    """One line naming the problem (an OSError names the path and what to do)."""
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({err.reason} at byte {err.start}); give a UTF-8 file"
    if isinstance(err, FileExistsError) and err.filename and os.path.isfile(err.filename):
        return f"{err.filename}: is a file, not a directory; choose a path whose folders are folders"
    if isinstance(err, OSError) and err.errno in _OS_HINTS:
        where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{where}: {_OS_HINTS[err.errno]}" if where else _OS_HINTS[err.errno]
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return " ".join(str(err).split()) or type(err).__name__


def exit_code(err: BaseException) -> int:
    if isinstance(err, UnicodeDecodeError) or (isinstance(err, BAD_INPUT) and not isinstance(err, OSError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def run_guarded(work: Callable[[], int], prog: str, debug: bool = False) -> int:
    """Run `work`; the project's errors and OSError become `prog: error: ...` on stderr and exit 1/2."""
    try:
        return work()
    except KeyboardInterrupt:
        if debug_requested(debug):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*BAD_INPUT, *FAILED) as err:
        if debug_requested(debug):
            raise
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return exit_code(err)
