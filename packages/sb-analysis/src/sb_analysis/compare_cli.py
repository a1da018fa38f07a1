"""The ``--sweep`` options of ``sb-analysis compare`` and their checks (the command is compare_output.py)."""

from __future__ import annotations

import argparse

from .compare_output import FORMATS, run_compare_sweep
from .compare_sweep import DEFAULT_ALPHA


def probability(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1 (e.g. 0.01)")
    return value


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", metavar="ID_OR_DIR",
                   help="judge a sweep of sb-train sweep: its folder (runs/sweeps/<id>) or its id; ingests "
                   "its runs into --db first")
    p.add_argument("--runs", metavar="DIR",
                   help="with a sweep id: the folder of its run folders (default: runs)")
    p.add_argument("--baseline", metavar="VARIANT", help="the variant the others are paired with (default: "
                   "the sweep's first variant)")
    p.add_argument("--alpha", type=probability, default=DEFAULT_ALPHA,
                   help=f"significance level of the paired t-test (default {DEFAULT_ALPHA}: the speedrun "
                   "bar)")
    p.add_argument("--confidence", type=probability, default=0.95,
                   help="level of the confidence intervals (default 0.95)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output of --sweep (default: table)")


def compare_sweep_command(args: argparse.Namespace) -> int:
    if not args.sweep:
        raise ValueError("compare needs run ids (sb-analysis compare RUN RUN ...) or --sweep ID_OR_DIR")
    if args.run_ids:
        raise ValueError("give run ids or --sweep, not both")
    return run_compare_sweep(args.sweep, args.db, runs_root=args.runs, baseline=args.baseline,
                             alpha=args.alpha, confidence=args.confidence, fmt=args.format)
