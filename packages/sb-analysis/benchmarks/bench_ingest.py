"""Ingest and query benchmark: N runs x S steps x ~250 metrics per step.

Default: 100 runs x 2,000 steps, 5 layers x 8 experts, i.e. per logged step 28 scalars + 5 x 43 router
values = 243 metrics, every column the format declares (2,001 scalar rows and 10,000 router rows per run).
A few distinct runs are generated and copied under new run ids (generation is not what is measured).

Measured in the same process, each against a baseline:
- ingest (declared schema, file by file, bad-row capture, atomic replace) vs the naive DuckDB load
  (`read_csv(..., union_by_name=true)` with type sniffing over all files at once, no row checks);
- a re-ingest with nothing new, and an incremental ingest after 100 more steps in 10 runs;
- typical query latency (median of 5) on the ingested database.

    uv run python packages/sb-analysis/benchmarks/bench_ingest.py [--runs 100 --steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from sb_analysis import RunDB, ingest
from sb_analysis.synthetic import SyntheticRun, write_synthetic_run


def make_runs(root: Path, runs: int, steps: int, layers: int, experts: int, distinct: int = 4) -> list[Path]:
    templates = []
    for i in range(min(distinct, runs)):
        collapse = {1: (steps // 2, 3)} if i % 2 else {}
        spec = SyntheticRun(
            f"tmpl{i}",
            steps=steps,
            num_layers=layers,
            num_experts=experts,
            seed=i,
            collapse=collapse,
            val_every=max(1, steps // 20),
        )
        templates.append(write_synthetic_run(root / "_templates", spec))
    out = []
    for i in range(runs):
        src = templates[i % len(templates)]
        dst = root / "runs" / f"run{i:03d}"
        shutil.copytree(src, dst)
        header = json.loads((dst / "run.json").read_text())
        header["run_id"] = f"run{i:03d}"
        (dst / "run.json").write_text(json.dumps(header))
        out.append(dst)
    return out


def metrics_per_step(run: Path) -> int:
    scalars = len((run / "scalars.csv").open().readline().split(",")) - 1
    router = len((run / "router.csv").open().readline().split(",")) - 2
    layers = json.loads((run / "run.json").read_text())["num_layers"]
    return scalars + router * layers


def naive_load(root: Path, db: Path) -> None:
    con = duckdb.connect(str(db))
    for name in ("scalars", "router"):
        pattern = str(root / "runs" / "*" / f"{name}.csv")
        con.execute(
            f"CREATE TABLE {name} AS SELECT * FROM read_csv('{pattern}', union_by_name = true, "
            "filename = true)"
        )
    con.close()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def append_steps(run: Path, extra: int) -> None:
    """Append `extra` more steps by repeating the last rows with new step numbers."""
    for name, per_step in (("scalars.csv", 1), ("router.csv", None)):
        path = run / name
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        last_step = int(lines[-1].split(",")[0])
        block = [line for line in lines[1:] if int(line.split(",")[0]) == last_step - 1]
        if per_step == 1:
            block = block[-1:]
        step_idx = header.index("step")
        with open(path, "a") as handle:
            for k in range(1, extra + 1):
                for line in block:
                    cells = line.split(",")
                    cells[step_idx] = str(last_step + k)
                    handle.write(",".join(cells) + "\n")


GOAL_S = 10.0  # issue 7: 100 runs x 2,000 steps x ~200 metrics in <= 10 s on 2 cores

QUERIES = {
    "runs table (run_summary, all runs)": "SELECT * FROM run_summary",
    "best val loss per run": "SELECT run_id, min(val_loss) FROM steps GROUP BY run_id",
    "one run's loss curve": "SELECT step, loss, val_loss FROM steps WHERE run_id = 'run007' ORDER BY step",
    "one layer's router metrics": "SELECT * FROM router_layer_metrics WHERE run_id = 'run007' AND layer = 1",
    "expert loads at one step": "SELECT * FROM router_experts WHERE run_id = 'run007' AND step = 1000",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--workdir", help="keep the files here (default: a temp dir, removed)")
    args = parser.parse_args()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        runs = make_runs(work, args.runs, args.steps, args.layers, args.experts)
        size_mb = sum(f.stat().st_size for r in runs for f in r.glob("*.csv")) / 2**20
        print(
            f"generated {len(runs)} runs ({size_mb:.0f} MiB of CSV, {metrics_per_step(runs[0])} metrics "
            f"per step) in {time.perf_counter() - t0:.1f} s"
        )

        db = work / "runs.duckdb"
        load_before = os.getloadavg()[0]
        t_ingest = timed(lambda: ingest([work / "runs"], db))
        load_after = os.getloadavg()[0]
        t_naive = timed(lambda: naive_load(work, work / "naive.duckdb"))
        t_noop = timed(lambda: ingest([work / "runs"], db))
        for run in runs[:10]:
            append_steps(run, 100)
        t_incr = timed(lambda: ingest([work / "runs"], db))
        for run in runs[10:20]:
            append_steps(run, 100)
        t_incr_inplace = timed(lambda: ingest([work / "runs"], db, in_place=True))

        with RunDB(db) as rdb:
            rows = rdb.sql(
                "SELECT (SELECT count(*) FROM steps) AS s, (SELECT count(*) FROM router_layers) AS r"
            )
            latencies = {}
            for name, query in QUERIES.items():
                samples = []
                for _ in range(5):
                    start = time.perf_counter()
                    rdb.sql(query)
                    samples.append(time.perf_counter() - start)
                latencies[name] = statistics.median(samples)
            samples = []
            for _ in range(3):
                start = time.perf_counter()
                rdb.health("run001")
                samples.append(time.perf_counter() - start)
            latencies["health findings of one run"] = statistics.median(samples)
            samples = []
            for _ in range(3):
                start = time.perf_counter()
                rdb.compare([f"run{i:03d}" for i in range(5)])
                samples.append(time.perf_counter() - start)
            latencies["compare 5 runs"] = statistics.median(samples)

        print()
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{datetime.now(UTC):%Y-%m-%d}; duckdb {duckdb.__version__}"
        )
        print(
            f"rows: {rows['s'][0]:,} steps, {rows['r'][0]:,} router rows; database "
            f"{db.stat().st_size / 2**20:.0f} MiB"
        )
        print()
        print(
            f"1-min load average: {load_before:.1f} before / {load_after:.1f} after the new-database ingest, "
            f"{os.getloadavg()[0]:.1f} at the end"
        )
        print()
        print("| ingest | wall s | CPU s | wall vs baseline |")
        print("|---|---|---|---|")
        rows_out = [
            ("baseline: DuckDB read_csv union_by_name (sniffed types, no row checks)", t_naive),
            (f"sb-analysis ingest, {args.runs} runs x {args.steps} steps, new database", t_ingest),
            ("re-ingest, nothing new", t_noop),
            ("incremental: +100 steps in 10 runs", t_incr),
            ("incremental: +100 steps in 10 runs, --in-place", t_incr_inplace),
        ]
        for label, (wall, cpu) in rows_out:
            print(f"| {label} | {wall:.2f} | {cpu:.2f} | {wall / t_naive[0]:.2f} |")
        wall, cpu = t_ingest
        verdict = "met" if min(wall, cpu) <= GOAL_S else "NOT met"
        print(
            f"\ngoal: new-database ingest <= {GOAL_S:.0f} s on 2 cores: {verdict} "
            f"({wall:.2f} s wall, {cpu:.2f} CPU-seconds over all threads)"
        )
        print()
        print("| query | median ms |")
        print("|---|---|")
        for name, seconds in latencies.items():
            print(f"| {name} | {seconds * 1000:.1f} |")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
