"""`sb-train` command line (filled in by the trainer work)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("sb-train: the command line is being built (issue #6)")
