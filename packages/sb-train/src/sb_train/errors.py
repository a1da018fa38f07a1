"""sb-train's error types for a run that cannot start as asked (the configuration's are in config.py,
the checkpoints' in checkpoint/layout.py); the command line turns each into one line and exit code 2."""

from __future__ import annotations

__all__ = ["RunError", "RunExistsError", "RunLockedError"]


class RunError(RuntimeError):
    """A run cannot start or continue as asked; the message says why and what to do instead."""


class RunLockedError(RunError):
    """Another live trainer holds the run folder's lock (the message names its pid and host)."""


class RunExistsError(RunError):
    """A new run was asked for in a folder that already holds one (continue it with --resume)."""
