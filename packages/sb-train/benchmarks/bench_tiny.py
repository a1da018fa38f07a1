"""The `tiny` preset on this machine's CPU: loss curve, time to a fixed validation loss, and the ratio of its
validation loss to a unigram model's (the baseline, fitted on the same training shards in the same run).

    uv run python packages/sb-train/benchmarks/bench_tiny.py                 # train tiny, then report
    uv run python packages/sb-train/benchmarks/bench_tiny.py --run-dir runs/<id>   # report on a finished run
    uv run python packages/sb-train/benchmarks/bench_tiny.py --set schedule.num_iterations=300

Run it from the folder where the tiny data lives (or will be built): data/python-docs/.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sb_data import read_tokens
from sb_train.config_loading import load_config


def unigram_val_loss(train_glob: str, val_glob: str, vocab: int, val_tokens: int) -> float:
    """Cross-entropy (nats) on the first ``val_tokens`` validation targets of add-one-smoothed token
    frequencies counted over every training shard."""
    counts = np.ones(vocab, dtype=np.float64)
    for path in sorted(glob.glob(train_glob)):
        counts += np.bincount(read_tokens(path).astype(np.int64), minlength=vocab)[:vocab]
    logp = np.log(counts / counts.sum())
    val = np.concatenate([read_tokens(p) for p in sorted(glob.glob(val_glob))]).astype(np.int64)
    targets = val[1 : val_tokens + 1]
    return float(-logp[targets].mean())


def read_curve(run_dir: Path) -> list[dict[str, float | None]]:
    rows: dict[int, dict[str, float | None]] = {}
    with open(run_dir / "scalars.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows[int(row["step"])] = {k: (float(v) if v else None) for k, v in row.items()}
    return [rows[s] for s in sorted(rows)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="report on this finished tiny run instead of training one")
    ap.add_argument("--target", type=float, default=2.0, help="validation loss to time (nats, default 2.0)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="extra --set for sb-train")
    args = ap.parse_args()
    cfg = load_config("tiny", overrides=args.overrides)
    run_dir = args.run_dir
    wall = None
    if run_dir is None:
        out = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
        cmd = [sys.executable, "-m", "sb_train", "--preset", "tiny", "--out", str(out),
               *[a for o in args.overrides for a in ("--set", o)]]
        print("running:", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t
        run_dir = next(p for p in out.iterdir() if p.is_dir())
    curve = read_curve(run_dir)
    header = json.loads((run_dir / "run.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    baseline = unigram_val_loss(cfg.data.train_files, cfg.data.val_files, cfg.model.vocab_size,
                                cfg.data.val_tokens_final)

    print(f"\n# tiny preset on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {header['run_id']}")
    print("\n| step | train time (s) | tokens | train loss | val loss |")
    print("|---:|---:|---:|---:|---:|")
    for row in curve:
        val = row.get("val_loss")
        if val is not None or row["step"] % 100 == 0:
            loss = row.get("loss")
            print(f"| {int(row['step'])} | {row['time_ms'] / 1000:.1f} | {int(row.get('tokens') or 0):,} | "
                  f"{'' if loss is None else f'{loss:.3f}'} | {'' if val is None else f'{val:.3f}'} |")
    vals = [(r["step"], r["time_ms"], r["val_loss"]) for r in curve if r.get("val_loss") is not None]
    hit = next(((s, t) for s, t, v in vals if v <= args.target), None)
    final = status.get("final_val_loss")
    print("\n| measure | value |")
    print("|---|---:|")
    print(f"| unigram baseline val loss (nats, same shards) | {baseline:.3f} |")
    if final is not None:
        print(f"| tiny final val loss (nats) | {final:.3f} |")
        print(f"| ratio final / unigram | {final / baseline:.2f}x |")
    print(f"| time to val loss <= {args.target} | "
          + (f"{hit[1] / 1000:.0f} s (step {int(hit[0])}) |" if hit else "not reached |"))
    print(f"| training time (excl. validation) | {status['time_ms'] / 1000:.0f} s |")
    if wall is not None:
        print(f"| wall time of the whole command | {wall:.0f} s |")
    tok_s = curve[-2]["tokens"] / (curve[-2]["time_ms"] / 1000) if len(curve) > 1 else math.nan
    print(f"| mean training throughput | {tok_s:,.0f} tokens/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
