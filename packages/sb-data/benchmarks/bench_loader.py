"""Loader throughput against a raw np.memmap read of the same bytes, and resume time vs position.

Run:  uv run python packages/sb-data/benchmarks/bench_loader.py   (add --quick for a smoke run)

Prints a markdown table; every ratio is against a baseline measured in the same run on the same files.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sb_data import DistributedTokenLoader, write_shard
from sb_data.format import HEADER_BYTES


def make_shards(
    folder: Path, n_shards: int, tokens_per_shard: int, mean_doc: int, seed: int = 0
) -> list[Path]:
    """GPT-2-sized random ids with an end-of-text token opening documents of geometric length."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_shards):
        tokens = rng.integers(0, 50256, size=tokens_per_shard, dtype=np.uint16)
        starts = np.cumsum(rng.geometric(1.0 / mean_doc, size=tokens_per_shard // mean_doc * 2))
        tokens[starts[starts < tokens_per_shard]] = 50256
        tokens[0] = 50256
        path = folder / f"bench_train_{i:06d}.bin"
        write_shard(path, tokens, vocab_size=50257, eot_id=50256)
        paths.append(path)
    return paths


def memmap_baseline(paths: list[Path], steps: int, rank: int, world: int, T: int) -> float:
    """Tokens/s of the plainest correct reader: memmap slices -> int32/int64 tensors (drops shard tails)."""
    maps = [np.memmap(p, dtype=np.uint16, mode="r", offset=HEADER_BYTES) for p in paths]
    shard, pos = 0, 0
    t0 = time.perf_counter()
    for _ in range(steps):
        if pos + world * T + 1 > maps[shard].size:
            shard, pos = (shard + 1) % len(maps), 0
        window = maps[shard][pos + rank * T : pos + rank * T + T + 1]
        inputs = torch.from_numpy(window[:-1].astype(np.int32))
        targets = torch.from_numpy(window[1:].astype(np.int64))
        pos += world * T
    elapsed = time.perf_counter() - t0
    assert inputs.numel() == T and targets.numel() == T
    return steps * T / elapsed


def loader_rate(paths, steps, rank, world, T, **kwargs) -> tuple[float, DistributedTokenLoader]:
    loader = DistributedTokenLoader(paths, T, rank=rank, world_size=world, **kwargs)
    next(loader)  # the first shard read is start-up, not throughput
    t0 = time.perf_counter()
    for _ in range(steps):
        next(loader)
    elapsed = time.perf_counter() - t0
    return steps * T / elapsed, loader


def state_at_global_tokens(paths, target_tokens, rank, world, T, **kwargs) -> tuple[dict, float, int]:
    """Run a loader until the global stream has moved ``target_tokens``; returns (state, seconds, steps)."""
    loader = DistributedTokenLoader(paths, T, rank=rank, world_size=world, **kwargs)
    steps = -(-target_tokens // (world * T))
    t0 = time.perf_counter()
    for _ in range(steps):
        loader.next_host_batch()
    elapsed = time.perf_counter() - t0
    state = loader.state_dict()
    loader.close()
    return state, elapsed, steps


def resume_seconds(paths, state, rank, world, T, repeats, **kwargs) -> float:
    """Median time from a fresh loader to its first batch after load_state_dict(state)."""
    times = []
    for _ in range(repeats):
        loader = DistributedTokenLoader(paths, T, rank=rank, world_size=world, **kwargs)
        t0 = time.perf_counter()
        loader.load_state_dict(state)
        next(loader)
        times.append(time.perf_counter() - t0)
        loader.close()
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--tokens-per-shard", type=int, default=10_000_000)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--tokens-per-rank", type=int, default=64 * 1024)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--resume-at", type=float, default=1e9, help="global tokens into the stream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.shards, args.tokens_per_shard, args.steps, args.resume_at, args.repeats = (
            2,
            1_000_000,
            40,
            1e7,
            2,
        )
    rank, world, T = 0, args.world, args.tokens_per_rank
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shards(Path(tmp), args.shards, args.tokens_per_shard, mean_doc=1000)
        memmap_baseline(paths, args.steps, rank, world, T)  # warm the page cache for both sides
        for w in (1, world):
            base = max(memmap_baseline(paths, args.steps, rank, w, T) for _ in range(2))
            contiguous, _ = loader_rate(paths, args.steps, rank, w, T)
            aligned, _ = loader_rate(paths, args.steps, rank, w, T, mode="aligned", max_seq_len=2048)
            what = "same bytes" if w == 1 else f"baseline touches only rank 0's 1/{w} of each shard"
            rows.append(
                (f"world {w}: tokens/s, np.memmap slices (baseline; {what})", f"{base / 1e6:,.1f} M", "1.00")
            )
            rows.append(
                (
                    f"world {w}: tokens/s, loader contiguous",
                    f"{contiguous / 1e6:,.1f} M",
                    f"{contiguous / base:.2f}",
                )
            )
            rows.append(
                (
                    f"world {w}: tokens/s, loader aligned (max_seq_len 2048)",
                    f"{aligned / 1e6:,.1f} M",
                    f"{aligned / base:.2f}",
                )
            )
        for mode, extra in (("contiguous", {}), ("aligned", {"max_seq_len": 2048})):
            start_state, _, _ = state_at_global_tokens(paths, 0, rank, world, T, mode=mode, **extra)
            far_state, replay_s, steps = state_at_global_tokens(
                paths, int(args.resume_at), rank, world, T, mode=mode, **extra
            )
            t_start = resume_seconds(paths, start_state, rank, world, T, args.repeats, mode=mode, **extra)
            t_far = resume_seconds(paths, far_state, rank, world, T, args.repeats, mode=mode, **extra)
            rows.append((f"resume to first batch, {mode}, at token 0", f"{t_start * 1e3:,.1f} ms", "1.00"))
            rows.append(
                (
                    f"resume to first batch, {mode}, {args.resume_at:.0e} tokens in "
                    f"(epoch {far_state['epoch']})",
                    f"{t_far * 1e3:,.1f} ms",
                    f"{t_far / t_start:.2f}",
                )
            )
            rows.append(
                (
                    f"replaying {steps:,} steps to that point (what skipping costs), {mode}",
                    f"{replay_s * 1e3:,.0f} ms",
                    f"{replay_s / t_start:,.0f}",
                )
            )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; {stamp}"
    )
    print(
        f"data: {args.shards} shards x {args.tokens_per_shard:,} uint16 tokens (page cache warm); rank 0, "
        f"{T:,} tokens per rank per step, {args.steps} steps, CPU device; resume rows use world {world}"
    )
    print()
    print("| measurement | value | ratio |")
    print("|---|---:|---:|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
