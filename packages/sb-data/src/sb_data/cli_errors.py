"""How ``sb-data`` reports a failure: one line naming the problem and the fix, an exit code, ``--debug``.

Exit codes: 0 done; 1 the data, a file or the system failed (a bad shard or input file, a failed download,
permission denied, a full or read-only disk, text that is not UTF-8); 2 the command line must change (an
option's value, output that would be overwritten, an output folder under a file; argparse's own usage
errors are 2 as well); 130 interrupted. ``--debug`` or ``SB_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

from sb_data.download import DownloadError
from sb_data.format import ShardFormatError
from sb_data.sources import DocumentSourceError
from sb_data.tokenizers import DocumentEncodingError, TokenizerUnavailableError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SB_DEBUG"

# Errors about the data or the machine (exit 1), whose message already names the file and the fix.
DATA_ERRORS: tuple[type[Exception], ...] = (
    ShardFormatError,
    DocumentSourceError,
    DocumentEncodingError,
    TokenizerUnavailableError,
    DownloadError,
)

# errno -> (what is wrong, what to do)
_OS_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "choose a path made of folders"),
    errno.EISDIR: ("is a folder, not a file", "name a file inside it"),
    errno.EACCES: ("permission denied", "choose a location you may use, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a location you may use, or change its permissions"),
    errno.ENOSPC: ("no space left on the device", "free some space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another disk"),
    errno.EROFS: ("read-only file system", "write to a folder on a writable disk"),
    errno.EEXIST: ("already exists", "remove it or choose another name"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter name"),
    errno.EIO: ("input/output error", "the disk or network file system failed; check it and run again"),
}


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` was given, or ``SB_DEBUG`` is set to something other than empty/0/false/no."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    return flag or value not in ("", "0", "false", "no", "off")


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path, what is wrong, what to do (the message itself when it is ours)."""
    if exc.errno is None:  # raised by sb-data with a full message (e.g. FileNotFoundError("no shards ..."))
        return str(exc)
    where = exc.filename
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    problem, fix = _OS_PROBLEMS.get(exc.errno, (exc.strerror or os.strerror(exc.errno), ""))
    text = f"{where}: {problem}" if where is not None else problem
    return f"{text}; {fix}" if fix else text


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and the exit code for ``exc``."""
    if isinstance(exc, DATA_ERRORS):
        message, code = str(exc), EXIT_FAILED
    elif isinstance(exc, FileExistsError) and exc.errno is None:
        message, code = str(exc), EXIT_USAGE  # outputs that would be replaced: the fix is an option
    elif isinstance(exc, OSError):
        message, code = describe_os_error(exc), EXIT_FAILED
    elif isinstance(exc, UnicodeDecodeError):
        message = (
            f"text is not UTF-8 (byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start}); "
            "convert it to UTF-8"
        )
        code = EXIT_FAILED
    elif isinstance(exc, UnicodeError):
        message, code = f"text that is not valid Unicode ({exc}); rename the file or convert it", EXIT_FAILED
    elif isinstance(exc, ValueError):
        message, code = str(exc), EXIT_USAGE  # an option's value (the message names the option)
    else:
        message = (
            f"internal error ({type(exc).__name__}: {exc}); this is a bug: run again with --debug "
            f"(or {DEBUG_ENV}=1) for the traceback and report it"
        )
        code = EXIT_FAILED
    notes = [n for n in getattr(exc, "__notes__", []) if isinstance(n, str)]
    one_line = " ".join([message.rstrip(), *(f"({n})" for n in notes)]).replace("\n", " ")
    return one_line, code


def report(exc: BaseException, *, debug: bool, prog: str = "sb-data") -> int:
    """Print ``exc`` as one line on stderr (after its traceback with ``debug``); return the exit code."""
    message, code = describe(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
