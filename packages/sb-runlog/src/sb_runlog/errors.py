"""LogFormatError: a run directory, file or column set that does not follow docs/log-format.md."""

from __future__ import annotations


class LogFormatError(ValueError):
    """A run directory, file or column set that does not follow docs/log-format.md."""
