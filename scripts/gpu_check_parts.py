"""gpu_check's parts, one per process: ``python scripts/gpu_check_parts.py PART --json OUT [--dry-run]``.

Each part writes one JSON object (its figures, ``ok`` and, when not ok, ``error``) to OUT and exits 0 when
ok. scripts/gpu_check.py runs them (``run_part``) in forked processes with a time budget and kills a part
that overruns it.
Parts: ``train`` (scripts/gpu_check_train.py), ``bank``, ``muon``, ``loader``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ bank
def part_bank(dry_run: bool) -> dict[str, Any]:
    """The bank vs a dense ReLU² FFN of equal active parameters, fwd+bwd: packages/sb-model/benchmarks/
    bench_bank.py (record shapes, bf16, eager and compiled on CUDA; toy shapes, fp32, eager on CPU)."""
    bench = ROOT / "packages/sb-model/benchmarks/bench_bank.py"
    if dry_run or not torch.cuda.is_available():
        args = ["--tokens", "128", "--dim", "32", "--hidden", "32", "--experts", "4", "--topk", "1",
                "--modes", "eager", "--rounds", "1", "--reps", "1", "--warmup", "1", "--no-naive"]
    else:
        args = ["--device", "cuda", "--dtype", "bfloat16", "--topk", "1", "2", "--modes", "eager", "compiled",
                "--rounds", "3", "--reps", "3", "--warmup", "2", "--no-naive"]
    # in this process (its imports are paid already): the benchmark's main() with its own argv
    spec = importlib.util.spec_from_file_location("bench_bank", bench)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_bank"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    text, saved_argv = io.StringIO(), sys.argv
    sys.argv = [str(bench), *args]
    try:
        with contextlib.redirect_stdout(text):
            module.main()
    finally:
        sys.argv = saved_argv
    stdout = text.getvalue()
    print(stdout)
    rows = _markdown_rows(stdout)
    header = next((ln for ln in stdout.splitlines() if ln.startswith("machine:")), "")
    out: dict[str, Any] = {"command": f"bench_bank.py {' '.join(args)}", "rows": rows, "header": header}
    out["ok"] = bool(rows)
    if not out["ok"]:
        out["error"] = f"bench_bank.py printed no table: {stdout[-1500:]}"
    return out


def _markdown_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table of ``text`` as a list of {column: cell}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        return []
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=False)) for ln in lines[2:]]


# ------------------------------------------------------------------------------------------------ muon
def part_muon(dry_run: bool) -> dict[str, Any]:
    """One Muon step over one record layer's matrices: sb_muon with the Triton Gram kernel, sb_muon with
    torch matmuls, torch.optim.Muon; the Triton and torch paths must agree."""
    from sb_muon import Muon

    cuda = torch.cuda.is_available() and not dry_run
    device = "cuda" if cuda else "cpu"
    scale = 16 if dry_run else 1  # toy: shapes / 16
    shapes = [(4, 896 // scale, 896 // scale), (8, 1024 // scale, 896 // scale),
              (8, 896 // scale, 1024 // scale), (4096 // scale, 1024 // scale)]
    reps = 1 if dry_run else 10
    gen = torch.Generator(device="cpu").manual_seed(0)
    grads = [torch.randn(*s, generator=gen).to(device) * 1e-3 for s in shapes]
    weights = [torch.randn(*s, generator=gen).to(device) * 0.02 for s in shapes]

    def ours(use_triton: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        ps = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        return Muon(ps, lr=0.02, stacked=True, use_triton=use_triton), ps

    out: dict[str, Any] = {"device": device, "shapes": [list(s) for s in shapes], "reps": reps}
    opt, ps_torch = ours(False)
    opt.step()  # the first step allocates state; time the next ones
    out["sb_muon_torch_ms"] = round(1e3 * _median_s(opt.step, reps), 3)
    if cuda:
        opt_t, _ = ours(True)
        opt_t.step()
        out["sb_muon_triton_ms"] = round(1e3 * _median_s(opt_t.step, reps), 3)
        # same start, same gradients: one more step each from fresh copies must agree closely
        a, pa = ours(False)
        b, pb = ours(True)
        a.step()
        b.step()
        diff = max(float((x - y).norm() / (x - w).norm().clamp_min(1e-30))
                   for x, y, w in zip(pa, pb, weights, strict=True))
        out["triton_vs_torch_update_rel_diff"] = diff
        out["triton_speedup"] = round(out["sb_muon_torch_ms"] / out["sb_muon_triton_ms"], 3)
    else:
        out["sb_muon_triton_ms"] = None
        out["triton_note"] = "not run: the Triton Gram kernel needs CUDA"
    if hasattr(torch.optim, "Muon"):
        flat = [torch.nn.Parameter(m.clone()) for w in weights for m in (w if w.ndim == 3 else [w])]
        for p in flat:
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-3
        theirs = torch.optim.Muon(flat, lr=0.02)
        theirs.step()
        out["torch_optim_muon_ms"] = round(1e3 * _median_s(theirs.step, reps), 3)
    else:
        out["torch_optim_muon_ms"] = None
    finite = all(bool(torch.isfinite(p).all()) for p in ps_torch)
    ok_diff = out.get("triton_vs_torch_update_rel_diff", 0.0) < 0.05
    out["ok"] = finite and ok_diff
    if not out["ok"]:
        out["error"] = "non-finite weights after a step" if not finite else (
            f"Triton and torch updates differ by {out['triton_vs_torch_update_rel_diff']:.3g} (> 0.05)")
    return out


# ------------------------------------------------------------------------------------------------ loader
def part_loader(dry_run: bool) -> dict[str, Any]:
    """sb_data.DistributedTokenLoader to the device (pinned, non-blocking on CUDA) from synthetic shards,
    and a bare pinned host->device copy of the same bytes as the ceiling."""
    import numpy as np

    from sb_data import DistributedTokenLoader, write_shard

    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    T = 1024 if dry_run else 12288
    steps = 20 if dry_run else 400
    n_tokens = T * (steps + 50) + 1
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, 50256, size=n_tokens, dtype=np.uint16)
        tokens[:: 997] = 50256
        path = Path(tmp) / "gpucheck_train_000000.bin"
        write_shard(path, tokens, vocab_size=50257, eot_id=50256)
        loader = DistributedTokenLoader([path], T, rank=0, world_size=1, device=device)
        for _ in range(5):
            next(loader)
        _sync()
        t = time.perf_counter()
        for _ in range(steps):
            x, _ = next(loader)
        _sync()
        dt = time.perf_counter() - t
        pinned = bool(getattr(loader, "pin_memory", False))
        loader.close()
    bytes_per_batch = T * (4 + 8)  # int32 inputs + int64 targets
    out: dict[str, Any] = {"device": str(device), "tokens_per_batch": T, "batches": steps,
                           "pinned": pinned,
                           "loader_tokens_per_s": round(steps * T / dt, 1),
                           "loader_gb_per_s": round(steps * bytes_per_batch / dt / 1e9, 3),
                           "loader_ms_per_batch": round(1e3 * dt / steps, 4)}
    if cuda:
        host = torch.empty(bytes_per_batch * 64, dtype=torch.uint8).pin_memory()
        copy_s = _median_s(lambda: host.to(device, non_blocking=True), 5)
        out["pinned_copy_gb_per_s"] = round(host.numel() / copy_s / 1e9, 3)
    out["ok"] = x.device.type == device.type and x.numel() == T
    if not out["ok"]:
        out["error"] = f"loader gave {x.numel()} tokens on {x.device}, expected {T} on {device}"
    return out


def part_train(dry_run: bool) -> dict[str, Any]:
    import gpu_check_train

    return gpu_check_train.run(dry_run)


PARTS = {"train": part_train, "bank": part_bank, "muon": part_muon, "loader": part_loader}


def run_part(part: str, json_path: str | Path, dry_run: bool) -> int:
    """Run one part, write its JSON; 0 when it is ok."""
    if dry_run:
        torch.set_num_threads(2)
    try:
        result = PARTS[part](dry_run)
    except Exception as exc:  # a part's failure is a report line, not a crash of the whole check
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(json_path).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result.get("ok") else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--json", required=True, help="where to write the part's result")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on CPU")
    args = ap.parse_args()
    return run_part(args.part, args.json, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
