"""Load test of ``sb-train serve`` on loopback: 32 concurrent clients for a fixed number of completion
requests, against sequential single requests (the baseline) measured in the same run on the same server.

    uv run python packages/sb-train/benchmarks/bench_serve.py RUN_OR_CHECKPOINT
    uv run python packages/sb-train/benchmarks/bench_serve.py runs/<id> --clients 32 --requests 256

The server runs as its own process (``python -m sb_train serve``) on 127.0.0.1 and is stopped at the end;
the script prints a markdown table (p50/p95 latency, completion tokens/s, errors, ratios) and the CPU model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time

import httpx


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_load(url: str, model: str, *, clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` completions by ``clients`` concurrent clients; latencies, tokens and errors."""
    todo = list(range(requests))
    latencies: list[float] = []
    tokens = errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while todo:
            i = todo.pop()
            body = {"model": model, "prompt": f"def function_{i}(x):\n    ", "max_tokens": max_tokens,
                    "temperature": 0.8, "seed": i}
            started = time.perf_counter()
            try:
                r = await http.post(url + "/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                errors += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"requests": requests, "wall_s": wall, "p50": pick(0.5), "p95": pick(0.95), "tokens": tokens,
            "tok_s": tokens / wall, "req_s": len(latencies) / wall, "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="run directory, its checkpoints folder, or one checkpoint directory")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--sequential", type=int, default=32, help="requests of the one-at-a-time baseline")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "sb_train", "serve", args.checkpoint,
                               "--port", str(port), "--max-batch", str(args.max_batch),
                               "--max-queue", str(4 * args.clients),
                               "--device", args.device])
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                model = httpx.get(url + "/v1/models", timeout=2).json()["data"][0]["id"]
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not answer within 120 s") from None
                time.sleep(0.2)
        asyncio.run(run_load(url, model, clients=2, requests=4, max_tokens=args.max_tokens))  # warm-up
        seq = asyncio.run(run_load(url, model, clients=1, requests=args.sequential,
                                   max_tokens=args.max_tokens))
        par = asyncio.run(run_load(url, model, clients=args.clients, requests=args.requests,
                                   max_tokens=args.max_tokens))
        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"model {model}, max_tokens {args.max_tokens}, --max-batch {args.max_batch}, device {args.device}; "
          f"peak batch {health['peak_rows']} rows")
    print(f"machine: {cpu_model()}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| load | requests | p50 latency | p95 latency | completion tokens/s | requests/s | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("sequential, 1 client (baseline)", seq), (f"{args.clients} concurrent clients", par)):
        print(f"| {name} | {r['requests']} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | "
              f"{r['tok_s']:.0f} | {r['req_s']:.1f} | {r['errors']} |")
    print(f"| ratio concurrent / sequential | | {par['p50'] / seq['p50']:.2f}x | "
          f"{par['p95'] / seq['p95']:.2f}x | "
          f"{par['tok_s'] / seq['tok_s']:.2f}x | {par['req_s'] / seq['req_s']:.2f}x | |")
    return 1 if par["errors"] or seq["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
