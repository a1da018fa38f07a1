"""`router-explorer`: start the app with Streamlit, served safely (shortcut for `streamlit run ... -- ARGS`).

Listens on 127.0.0.1 unless --host names another address (then it warns that anyone who can reach it can
read the run logs); the Host/Origin guard and the safe options of serving.py apply either way. Errors are
one line with exit code 1 (failed) or 2 (bad input); --debug or SB_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sb_analysis.cli_errors import DEBUG_ENV, run_guarded

from .serving import DEFAULT_ADDRESS, EXPOSED_WARNING, is_loopback, streamlit_flags

SERVE = Path(__file__).with_name("_serve.py")


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The `python -m streamlit run` command line for these arguments."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(SERVE),
           *streamlit_flags(args.host or DEFAULT_ADDRESS, args.port, args.allowed_host)]
    if args.headless:
        cmd += ["--server.headless", "true"]
    app_args = []
    if args.db:
        app_args += ["--db", str(args.db)]
    if args.runs:
        app_args += ["--runs", *map(str, args.runs)]
    return cmd + (["--", *app_args] if app_args else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router-explorer",
        description="SwitchBank router explorer: a Streamlit app over an sb-analysis database.",
    )
    parser.add_argument("--db", type=Path, help="sb-analysis DuckDB file (default $SB_EXPLORER_DB, "
                        "$SB_ANALYSIS_DB, ./runs.duckdb)")
    parser.add_argument("--runs", type=Path, nargs="+", help="run directories to ingest into --db first")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--host", help=f"address to listen on (default {DEFAULT_ADDRESS}; any other address "
                        "lets everyone who reaches it read the run logs)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name browsers use to reach the app (e.g. the reverse proxy's name); "
                        "requests naming any other host are refused (repeatable)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    return parser


def _start(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port (1-65535)")
    missing = [str(r) for r in args.runs or () if not r.exists()]
    if missing:
        raise FileNotFoundError(f"run directory not found: {', '.join(missing)}")
    if args.host and not is_loopback(args.host):
        print(EXPOSED_WARNING.format(address=args.host), file=sys.stderr, flush=True)
    cmd = streamlit_command(args)
    os.execv(cmd[0], cmd)  # become the Streamlit server: signals reach it directly, no orphan child
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _start(args), "router-explorer", debug=args.debug)
