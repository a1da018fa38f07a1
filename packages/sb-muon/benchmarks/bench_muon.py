"""sb-muon benchmark: step time and orthogonalization error, ours vs torch.optim.Muon vs an SVD polar.

Run:  uv run python packages/sb-muon/benchmarks/bench_muon.py [--quick] [--out FILE.md]

Prints markdown tables (machine, date and versions first) with ratios measured in this run:

1. per record shape: time of one optimizer step on that matrix (ours: sb_muon.Muon with its
   defaults; eigh: sb_muon.Muon(method="eigh"); torch: torch.optim.Muon with its defaults;
   svd: an fp32 SVD polar factor alone), and the
   relative Frobenius error of each step's orthogonalized direction against the float64 SVD
   polar factor of the same input;
2. one layer's worth of the record's matrices (a 4x896x896 QKVO stack, 8 experts of 1024x896,
   8 of 896x1024, one 4096x1024) in one optimizer: step time, ours vs torch;
3. distributed: 2 ranks vs 1 rank (gloo, CPU, one thread per rank in both), 16 x 896x896: wall
   time, and CPU time of the busiest rank (robust when other processes share the cores).

torch.optim.Muon takes 2-D parameters only, so a 3-D stack is given to it as separate matrices in
one optimizer. On CPUs where bf16 is emulated torch.optim.Muon (always bf16) is very slow; shapes
above --torch-max-numel are then extrapolated by FLOPs from the last timed one (marked "~").
Timings are medians of interleaved repetitions (ours, eigh, torch, SVD in turn).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sb_muon import Muon, polar_factor
from sb_muon.hardware import compute_choice, read_cpu_flags

SHAPES = {
    "attn 896x896": (896, 896),
    "attn qkvo 4x896x896": (4, 896, 896),
    "expert W1 1024x896": (1024, 896),
    "expert W2 896x1024": (896, 1024),
    "experts 8x1024x896": (8, 1024, 896),
    "4096x1024": (4096, 1024),
}


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cpu_backend = torch.backends.cpu
    cap = cpu_backend.get_cpu_capability() if hasattr(cpu_backend, "get_cpu_capability") else "?"
    flags = read_cpu_flags()
    bf16 = "?" if flags is None else (" ".join(sorted(f for f in flags if "bf16" in f)) or "none")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return (f"{dt.date.today().isoformat()} · CPU {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} "
            f"threads, {cap}, bf16 flags: {bf16}) · GPU {gpu} · default compute dtype {compute_choice(dev)} "
            f"· torch {torch.__version__} · Python {platform.python_version()} · load average "
            f"{os.getloadavg()[0]:.1f}")


def ns_flops(shape: tuple[int, ...], steps: int = 5) -> float:
    *lead, r, c = shape
    m, n = min(r, c), max(r, c)
    batch = 1
    for d in lead:
        batch *= d
    return batch * steps * (4 * m * m * n + 2 * m ** 3)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def rel_err(O: torch.Tensor, P: torch.Tensor) -> float:
    return float((O.double() - P.double()).norm() / P.double().norm())


def step_direction(make_opt, G: torch.Tensor, scale: float, split: bool = False,
                   ) -> tuple[torch.Tensor, float]:
    """Run one step from W=0 with momentum 0 and lr 1: the parameter change is -scale * O.

    split: give a stack (..., r, c) to the optimizer as separate r x c matrices (torch.optim.Muon).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    G = G.to(device)
    if split and G.ndim > 2:
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in G.reshape(-1, *G.shape[-2:])]
        for p, g in zip(params, G.reshape(-1, *G.shape[-2:]), strict=True):
            p.grad = g.clone()
    else:
        params = [torch.nn.Parameter(torch.zeros_like(G))]
        params[0].grad = G
    opt = make_opt(params)
    seconds = timed(opt.step)
    moved = torch.stack([p.detach() for p in params]).reshape(G.shape) if split else params[0].detach()
    return (-moved / scale).cpu(), seconds


def ours_opt(params):
    return Muon(params, lr=1.0, momentum=0.0, nesterov=False, lr_scale="none", stacked=True)


def eigh_opt(params):
    return Muon(params, lr=1.0, momentum=0.0, nesterov=False, lr_scale="none", stacked=True, method="eigh")


def torch_opt(params):
    return torch.optim.Muon(params, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)


def bench_shapes(reps: int, torch_max_numel: int) -> tuple[list[str], float | None]:
    rows = ["| shape | ours step (s) | ours eigh step (s) | torch.optim.Muon step (s) | SVD polar (s) | "
            "ours / torch | eigh / torch | ours error | eigh error | torch error |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    torch_rate = None  # seconds per NS FLOP of the last timed torch shape, for extrapolation
    has_torch = hasattr(torch.optim, "Muon")
    for label, shape in SHAPES.items():
        G = torch.randn(*shape)
        P = polar_factor(G)
        run_torch = has_torch and G.numel() <= torch_max_numel
        scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
        ours_t, eigh_t, torch_t, svd_t = [], [], [], []
        O = O_e = O_t = None
        for _ in range(reps):  # interleaved
            O, t = step_direction(ours_opt, G, 1.0)
            ours_t.append(t)
            O_e, t = step_direction(eigh_opt, G, 1.0)
            eigh_t.append(t)
            if run_torch:
                O_t, t = step_direction(torch_opt, G, scale, split=True)
                torch_t.append(t)
            svd_t.append(timed(lambda G=G: polar_factor(G, torch.float32)))
        ours_s, eigh_s, svd_s = (statistics.median(x) for x in (ours_t, eigh_t, svd_t))
        if run_torch:
            torch_s = statistics.median(torch_t)
            torch_rate = torch_s / ns_flops(shape)
            torch_cell, terr_cell = f"{torch_s:.3f}", f"{rel_err(O_t, P):.3f}"
        elif torch_rate is not None:
            torch_s = torch_rate * ns_flops(shape)
            torch_cell, terr_cell = f"~{torch_s:.2f}", "n/a"
        else:
            torch_s, torch_cell, terr_cell = float("nan"), "n/a", "n/a"
        rows.append(f"| {label} | {ours_s:.3f} | {eigh_s:.3f} | {torch_cell} | {svd_s:.3f} | "
                    f"{ours_s / torch_s:.3f} | {eigh_s / torch_s:.3f} | {rel_err(O, P):.4f} | "
                    f"{rel_err(O_e, P):.1e} | {terr_cell} |")
    return rows, torch_rate


def layer_params(dtype=torch.float32) -> list[torch.Tensor]:
    shapes = [(4, 896, 896), (8, 1024, 896), (8, 896, 1024), (4096, 1024)]
    return [torch.nn.Parameter(torch.randn(*s, dtype=dtype) * 0.02) for s in shapes]


def bench_layer(reps: int, run_torch: bool, torch_rate: float | None) -> list[str]:
    ours_params = layer_params()
    ours = Muon(ours_params, lr=0.02, stacked=True)
    slices = [torch.nn.Parameter(t.detach()[i].clone()) if t.ndim == 3 else None
              for t in ours_params for i in range(t.shape[0] if t.ndim == 3 else 1)]
    flat = [s for s in slices if s is not None] + [torch.nn.Parameter(ours_params[-1].detach().clone())]
    for p in ours_params:
        p.grad = torch.randn_like(p) * 1e-3
    for p in flat:
        p.grad = torch.randn_like(p) * 1e-3
    n_mats = len(flat)
    rows = ["| parameter set | matrices | ours step (s) | torch.optim.Muon step (s) | ours / torch |",
            "|---|---|---|---|---|"]
    theirs = torch.optim.Muon(flat, lr=0.02) if run_torch and hasattr(torch.optim, "Muon") else None
    ours_t, torch_t = [], []
    for _ in range(reps):  # interleaved
        ours_t.append(timed(ours.step))
        if theirs is not None:
            torch_t.append(timed(theirs.step))
    ours_s = statistics.median(ours_t)
    if theirs is not None:
        torch_s = statistics.median(torch_t)
        cell, ratio = f"{torch_s:.3f}", f"{ours_s / torch_s:.3f}"
    elif torch_rate is not None:
        torch_s = sum(torch_rate * ns_flops(tuple(p.shape)) for p in flat)
        cell, ratio = f"~{torch_s:.1f}", f"~{ours_s / torch_s:.3f}"
    else:
        cell, ratio = "not run", "n/a"
    label = "record layer (4x896², 16 experts, 4096x1024)"
    rows.append(f"| {label} | {n_mats} | {ours_s:.3f} | {cell} | {ratio} |")
    return rows


def _dist_worker(rank: int, world: int, init_file: str, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(896, 896, generator=gen)) for _ in range(16)]
    opt = Muon(params, lr=0.02)
    times, cpu_times = [], []
    for _ in range(steps + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if world > 1:
            dist.barrier()
        cpu0 = time.process_time()
        times.append(timed(opt.step))
        cpu_times.append(time.process_time() - cpu0)
    cpu = torch.tensor(statistics.median(cpu_times[1:]))
    if world > 1:  # the busiest rank's CPU time
        dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save({"median": statistics.median(times[1:]), "cpu": float(cpu),
                    "params": [p.detach() for p in params]}, out)
    if world > 1:
        dist.destroy_process_group()


def bench_distributed(steps: int) -> list[str]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            out = os.path.join(tmp, f"w{world}.pt")
            mp.start_processes(_dist_worker, args=(world, os.path.join(tmp, f"store{world}"), steps, out),
                               nprocs=world, join=True, start_method="spawn")
            results[world] = torch.load(out, weights_only=True)
    same = all(torch.equal(a, b) for a, b in zip(results[1]["params"], results[2]["params"], strict=True))
    one, two = results[1]["median"], results[2]["median"]
    c1, c2 = results[1]["cpu"], results[2]["cpu"]
    return ["| 16 x 896x896, 1 thread per rank | 1 rank | 2 ranks | 2 / 1 | params equal |",
            "|---|---|---|---|---|",
            f"| wall time per step (s) | {one:.3f} | {two:.3f} | {two / one:.3f} | {same} |",
            f"| CPU time of the busiest rank per step (s) | {c1:.3f} | {c2:.3f} | {c2 / c1:.3f} | |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer distributed steps")
    ap.add_argument("--no-torch-layer", action="store_true",
                    help="extrapolate torch.optim.Muon on the layer instead of timing it (slow bf16 CPUs)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--torch-max-numel", type=int, default=1 << 40,
                    help="time torch.optim.Muon directly up to this matrix size, extrapolate above")
    ap.add_argument("--skip-distributed", action="store_true")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.manual_seed(0)
    reps = 1 if args.quick else args.reps
    lines = [f"Machine: {machine_line()}", ""]
    lines += ["Per shape (one optimizer step on one matrix; errors vs float64 SVD polar factor):", ""]
    shape_rows, torch_rate = bench_shapes(reps, args.torch_max_numel)
    lines += shape_rows
    lines += ["", "One record layer's matrices in one optimizer:", ""]
    lines += bench_layer(reps, run_torch=not args.no_torch_layer, torch_rate=torch_rate)
    if not args.skip_distributed:
        lines += ["", "Distributed orthogonalization (gloo):", ""]
        lines += bench_distributed(steps=2 if args.quick else 3)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
