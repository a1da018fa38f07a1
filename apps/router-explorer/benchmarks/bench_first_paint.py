"""First paint of every page on a big run: server-side script run time, measured with AppTest.

Generates a 2,000-step x 28-layer x 8-expert run (sb_analysis.synthetic, with a collapsing layer
and domain labels; generation and ingest are not timed), ingests it, then for each page opens a new
AppTest session on it (a new browser tab) and times the script run:

- cold: the data caches cleared first (the first visitor after the server started or the run grew);
- warm: the data cached by an earlier session (every later visitor).

The first page of a fresh server process is reported on its own row: it also pays one-time costs.

`script s` is the app's own measurement (from the top of the script to the end of the page, the number the
sidebar shows); `AppTest s` adds AppTest's own work around the script (message handling). The goal is
`script s` of the cold first paint under 2 s; the ratio is against that goal. Median of --repeats runs.

    uv run python apps/router-explorer/benchmarks/bench_first_paint.py [--steps 2000 --layers 28]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from router_explorer.app import PAGES
from router_explorer.sample_data import big_run
from router_explorer.serving import PAGE_SCRIPT
from sb_analysis import ingest

ENTRY = Path(PAGE_SCRIPT)
GOAL_S = 2.0
SCRIPT_TIME = re.compile(r"page script ran in ([0-9.]+) s")


def paint(page: str, run_id: str) -> tuple[float, float, int]:
    """One first paint in a fresh session: (script s, AppTest s, plotly charts drawn)."""
    at = AppTest.from_file(str(ENTRY), default_timeout=120)
    at.query_params["page"] = page.lower()
    at.query_params["run"] = run_id
    t0 = time.perf_counter()
    at.run()
    wall = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception[0].value}")
    captions = [c.value for c in at.sidebar.caption if SCRIPT_TIME.search(c.value)]
    if not captions:
        raise RuntimeError(f"{page}: the page did not finish (no script-time caption)")
    return float(SCRIPT_TIME.search(captions[-1]).group(1)), wall, len(at.get("plotly_chart"))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rx-bench-") as tmp:
        t0 = time.perf_counter()
        run_dir = big_run(Path(tmp) / "runs", args.steps, args.layers, args.experts)
        t1 = time.perf_counter()
        db = Path(tmp) / "runs.duckdb"
        report = ingest([run_dir], db)
        t2 = time.perf_counter()
        if report.exit_code:
            raise SystemExit(f"ingest failed: {report.failures}")
        print(f"run: {args.steps} steps x {args.layers} layers x {args.experts} experts "
              f"(written in {t1 - t0:.1f} s, ingested in {t2 - t1:.1f} s, database "
              f"{db.stat().st_size / 2**20:.0f} MiB)")
        os.environ["SB_EXPLORER_DB"] = str(db)
        # The very first page a fresh server process draws also pays one-time costs (plotly's lazy
        # validators, DuckDB's first query); reported apart, then every page is measured in a warm process.
        process_first, process_first_wall, _ = paint("Routing", "big")
        rows = []
        for page in PAGES:
            cold, warm, cold_wall, warm_wall = [], [], [], []
            charts = 0
            for _ in range(args.repeats):
                st.cache_data.clear()
                s, w, charts = paint(page, "big")
                cold.append(s)
                cold_wall.append(w)
                s, w, _ = paint(page, "big")
                warm.append(s)
                warm_wall.append(w)
            rows.append((page, charts, statistics.median(cold), statistics.median(cold_wall),
                         statistics.median(warm), statistics.median(warm_wall)))
    load = os.getloadavg()[0]
    print(f"\nfirst paint per page, median of {args.repeats}; goal: cold script time < {GOAL_S:.0f} s "
          f"(1-min load average at the end: {load:.1f})\n")
    print("| page | charts | cold script s | cold AppTest s | warm script s | warm AppTest s | cold / goal |")
    print("|---|---|---|---|---|---|---|")
    print(f"| Routing, first page of a fresh process | 7 | {process_first:.2f} | {process_first_wall:.2f} "
          f"| – | – | {process_first / GOAL_S:.2f} |")
    for page, charts, cold, cold_wall, warm, warm_wall in rows:
        print(f"| {page} | {charts} | {cold:.2f} | {cold_wall:.2f} | {warm:.2f} | {warm_wall:.2f} | "
              f"{cold / GOAL_S:.2f} |")
    worst = max(r[2] for r in rows)
    print(f"\nslowest cold first paint {worst:.2f} s: goal {'met' if worst < GOAL_S else 'NOT met'}")


if __name__ == "__main__":
    main()
