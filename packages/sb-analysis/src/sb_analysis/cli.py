"""`sb-analysis`: ingest runs, SQL over them, compare runs, router-health findings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .api import RunDB
from .cli_errors import DEBUG_ENV, run_guarded
from .compare import DEFAULT_TARGET_LOSS, side_by_side
from .compare_cli import add_sweep_arguments, compare_sweep_command
from .db import DEFAULT_DB
from .ingest import ingest
from .shell import run_shell
from .table import print_frame, write_frame


def _db_default() -> str:
    return os.environ.get("SB_ANALYSIS_DB", DEFAULT_DB)


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0 (refused, not clamped, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of steps")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb-analysis",
        description="SwitchBank run logs in DuckDB: ingest, SQL, comparisons and router health.",
    )
    parser.add_argument(
        "--db", default=_db_default(), help="database file (default: $SB_ANALYSIS_DB or ./runs.duckdb)"
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="load run directories and W&B runs into the database")
    p.add_argument(
        "targets",
        nargs="+",
        metavar="RUN",
        help="run directory, directory of run directories, W&B offline run directory or "
        ".wandb file, or entity/project/run_id (W&B API)",
    )
    p.add_argument("--run-id", help="store a single W&B run under this id (default: wandb-<id>)")
    p.add_argument(
        "--in-place",
        action="store_true",
        help="write the database file directly instead of an atomically replaced copy "
        "(faster for big databases; it waits --wait seconds for readers to close the file)",
    )
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="with --in-place: seconds to wait for readers holding the database (default 30)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="a run id already stored from another folder: drop the stored run and load this folder "
        "(without it such a run is refused, never merged)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    p = sub.add_parser("sql", help="run one read-only SQL statement over all runs (sandboxed)")
    p.add_argument("query", help='e.g. "SELECT run_id, min(val_loss) FROM steps GROUP BY ALL"')
    p.add_argument("--out", help="write the result to this .csv or .parquet file instead of printing")
    p.add_argument("--limit", type=int, default=50, help="rows to print (default 50; all go to --out)")

    p = sub.add_parser("shell", help="interactive SQL shell (read-only)")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("runs", help="list the runs with their key figures")
    p.add_argument("--limit", type=int, default=100)

    p = sub.add_parser("compare", help="side-by-side table of runs, or judge a sweep (--sweep)")
    p.add_argument("run_ids", nargs="*", metavar="RUN")
    add_sweep_arguments(p)
    p.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET_LOSS,
        help=f"target val loss for 'time to target' (default {DEFAULT_TARGET_LOSS})",
    )
    p.add_argument("--out", help="write the (untransposed) table to .csv or .parquet")

    p = sub.add_parser("health", help="router-health findings of a run in plain language")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--window", type=positive_int, help="window size in steps (default: a tenth of the run)")
    p.add_argument("--windows", action="store_true", help="also print the per-window table")
    p.add_argument("--out", help="write the findings to .csv or .parquet")

    p = sub.add_parser("errors", help="rows that could not be loaded (file, line, reason)")
    p.add_argument("run_id", nargs="?", metavar="RUN")
    return parser


def _cmd_ingest(args: argparse.Namespace) -> int:
    report = ingest(
        args.targets,
        args.db,
        run_id=args.run_id,
        in_place=args.in_place,
        replace=args.replace,
        lock_wait_s=args.wait,
        progress=None if args.quiet else print,
    )
    for path, message in report.failures:
        print(f"error: {message}" if path in message else f"error: {path}: {message}", file=sys.stderr)
    if report.row_errors:
        print(
            f"{len(report.row_errors)} row(s) could not be loaded; the rest was loaded "
            f"(see `sb-analysis errors`)",
            file=sys.stderr,
        )
    if not args.quiet:
        print(f"{len(report.runs)} run(s) ingested into {args.db}")
    return report.exit_code


def _run(args: argparse.Namespace) -> int:
    if args.command == "ingest":
        return _cmd_ingest(args)
    if args.command == "compare" and (args.sweep or not args.run_ids):
        return compare_sweep_command(args)
    with RunDB(args.db) as db:
        if args.command == "sql":
            frame = db.sql(args.query)
            if args.out:
                write_frame(frame, args.out)
                print(f"{frame.height} row(s) written to {args.out}")
            else:
                print_frame(frame, args.limit)
        elif args.command == "shell":
            return run_shell(db, limit=args.limit)
        elif args.command == "runs":
            print_frame(db.runs(), args.limit)
        elif args.command == "compare":
            frame = db.compare(args.run_ids, target_loss=args.target)
            if args.out:
                write_frame(frame, args.out)
            print_frame(side_by_side(frame), 200)
        elif args.command == "health":
            found = db.health(args.run_id, window=args.window)
            if args.out:
                write_frame(found, args.out)
            print(f"router health of {args.run_id}:")
            for row in found.iter_rows(named=True):
                print(f"  [{row['severity']:>4}] {row['message']}")
            if args.windows:
                print_frame(db.health_windows(args.run_id, args.window), 200)
        elif args.command == "errors":
            print_frame(db.errors(args.run_id), 1000)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command; errors become one line on stderr with exit code 1 (failed) or 2 (bad input)."""
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _run(args), "sb-analysis", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
