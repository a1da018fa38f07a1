"""`router-explorer`: start the app with Streamlit (a shortcut for `streamlit run ... -- ARGS`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ENTRY = Path(__file__).with_name("_entry.py")


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The `python -m streamlit run` command line for these arguments."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    app_args = []
    if args.db:
        app_args += ["--db", str(args.db)]
    if args.runs:
        app_args += ["--runs", *map(str, args.runs)]
    return cmd + (["--", *app_args] if app_args else [])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="router-explorer",
        description="SwitchBank router explorer: a Streamlit app over an sb-analysis database.",
    )
    parser.add_argument("--db", type=Path, help="sb-analysis DuckDB file (default $SB_EXPLORER_DB, "
                        "$SB_ANALYSIS_DB, ./runs.duckdb)")
    parser.add_argument("--runs", type=Path, nargs="+", help="run directories to ingest into --db first")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser")
    args = parser.parse_args(argv)
    cmd = streamlit_command(args)
    os.execv(cmd[0], cmd)  # become the Streamlit server: signals reach it directly, no orphan child
