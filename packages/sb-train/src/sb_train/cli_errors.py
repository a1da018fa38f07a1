"""How ``sb-train`` answers bad input: one line on stderr and an exit code; the traceback only on request.

:func:`run_cli` runs a command's body and maps the project's error types and OSError to one line
``sb-train: <what is wrong and what to do>``. With ``--debug`` anywhere on the command line, or ``SB_DEBUG=1``
in the environment, the traceback is printed first. An exception that is none of these is a bug and keeps
its traceback.

Exit codes (README, "Exit codes"):

==== ===========================================================================================
0    the run finished (or the command did what it was asked)
1    the machine refused: disk full, read-only file system, permission denied, a file where a
     folder was expected, ... (OSError other than a missing file)
2    the input is wrong: configuration, a missing file or folder, a checkpoint that is incomplete,
     corrupt or not a checkpoint, a run folder in use or already used, a device this machine lacks
     (argparse's usage errors are 2 as well)
3    the run aborted itself (a non-finite loss; status.json says why)
130  stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM: a checkpoint was saved, ``--resume`` continues
==== ===========================================================================================
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from sb_runlog import LogFormatError

from sb_train.checkpoint.layout import CheckpointError
from sb_train.config import ConfigError
from sb_train.errors import RunError

__all__ = ["EXIT_ABORTED", "EXIT_ENVIRONMENT", "EXIT_INPUT", "debug_requested", "describe", "run_cli",
           "stop_exit_code"]

EXIT_ENVIRONMENT = 1
EXIT_INPUT = 2
EXIT_ABORTED = 3

_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere (run.out_dir)",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere (run.out_dir)",
    errno.EROFS: "the file system is read-only; write elsewhere (run.out_dir / --out)",
    errno.EACCES: "permission denied; choose a folder you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you may write to, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder where a file was expected",
    errno.EEXIST: "a file of this name is in the way",
}


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` on the command line or ``SB_DEBUG`` set to something other than "", "0" or "false"."""
    return "--debug" in argv or os.environ.get("SB_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def describe(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an error a user can act on; None for anything else (a bug)."""
    cause = exc.__cause__
    if isinstance(exc, CheckpointError) and isinstance(cause, OSError) and not isinstance(cause,
                                                                                    FileNotFoundError):
        return EXIT_ENVIRONMENT, _one_line(str(exc))  # e.g. a save that hit a full disk
    if isinstance(exc, ConfigError | CheckpointError | RunError | LogFormatError):
        return EXIT_INPUT, _one_line(str(exc))
    if isinstance(exc, UnicodeDecodeError):
        return EXIT_INPUT, f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    if isinstance(exc, FileNotFoundError):
        return EXIT_INPUT, _one_line(_os_message(exc, "no such file or folder"))
    if isinstance(exc, OSError):
        hint = _OS_HINTS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        return EXIT_ENVIRONMENT, _one_line(_os_message(exc, hint))
    if isinstance(exc, ValueError):  # the package's own argument checks (schedule, prompt, head untying)
        return EXIT_INPUT, _one_line(str(exc))
    return None


def _os_message(exc: OSError, hint: str) -> str:
    if exc.filename is None:
        return str(exc) if exc.strerror is None else f"{hint} ({exc.strerror})"
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {hint}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_cli(prog: str, body: Callable[[], int], *, debug: bool) -> int:
    """``body()``'s exit code, or the exit code of the error it raised after one line on stderr (see the
    module docstring); with ``debug`` the traceback comes first. Ctrl-C outside a run's handling: 130."""
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return stop_exit_code("SIGINT")
    except Exception as exc:
        described = describe(exc)
        if described is None:
            raise
        if debug:
            traceback.print_exc()
        code, line = described
        print(f"{prog}: {line}", file=sys.stderr)
        return code


def stop_exit_code(signal_name: str | None) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
    try:
        return 128 + int(signal.Signals[signal_name or "SIGTERM"])
    except KeyError:
        return 128 + int(signal.SIGTERM)
