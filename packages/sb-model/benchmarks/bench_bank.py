"""Bank layer forward+backward vs a dense ReLU² FFN of equal active parameters vs a naive per-expert loop,
eager and under ``torch.compile``.

    uv run python packages/sb-model/benchmarks/bench_bank.py                  # record shapes, CPU (~17 min)
    uv run python packages/sb-model/benchmarks/bench_bank.py --preset small   # T=2048, d=h=512 (~4 min)
    uv run python packages/sb-model/benchmarks/bench_bank.py --preset small --modes eager --topk 1  # quick
    uv run python packages/sb-model/benchmarks/bench_bank.py --device cuda --dtype bfloat16     # on a GPU

Shapes (``--preset``): ``record`` (default) is one bank call of the record run — a rank's micro-batch of T =
12,288 tokens, d = 896, h = 1024, E = 8 (docs/design/presets.md); ``small`` is T = 2048, d = h = 512, E = 8,
about 1/20 of the work, for quick comparisons. ``--tokens/--dim/--hidden/--experts`` override a preset's
values.

Protocol: every round runs all implementations back to back (interleaved, so machine noise hits them alike).
Each is timed as the fastest of ``--reps`` forward+backward passes with a materialised random upstream
gradient; before every pass the input's and all parameters' gradients are set to None, as
``optimizer.zero_grad()`` does in a training step. Wall time and process CPU time (all threads) are taken
separately; the table reports medians over rounds and, for the ratios, the median and inter-quartile range of
the per-round ratios against the dense FFN of the same round and mode (compiled bank vs compiled dense, eager
vs eager). Compiled = ``torch.compile(fullgraph=True)`` with the default (inductor) backend, compiled once
before timing. "no metrics" is the default bank with ``collect_metrics=False``; "bare" also drops the
reverse-EMA feature and the adapters (router on the normed token and flags only). Goal (CPU, record shapes):
the top-1 bank at most 1.15x the dense FFN.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import sb_model as sm
from sb_model.bank.experts import choose_expert_impl
from sb_model.bank.features import build_router_flags
from sb_model.bank.router import ema_features
from sb_model.functional import init_linear_

# ``record``: one bank call of the record run (a rank's 12,288-token micro-batch at the record's model sizes);
# ``small``: about 1/20 of that work, for quick comparisons
PRESETS: dict[str, dict[str, int]] = {
    "record": {"tokens": 12288, "dim": 896, "hidden": 1024, "experts": 8, "rounds": 5, "reps": 2},
    "small": {"tokens": 2048, "dim": 512, "hidden": 512, "experts": 8, "rounds": 9, "reps": 3},
}


def dense_ffn(w1: torch.Tensor, w2: torch.Tensor):
    def run(x):
        return torch.relu(x @ w1.t()).square() @ w2.t()

    return run


def naive_loop(bank: sm.SharedExpertBank, k: int):
    """The reference's dispatch: router, top-k, then a Python loop over experts with boolean masks."""

    def run(x, ctx):
        B, T, d = x.shape
        xf = x.reshape(-1, d)
        # the same router features as the bank
        fwd, rev = ema_features(bank.config, x, bank.ema_alpha_fwd[0], bank.ema_alpha_rev[0], ctx.doc_start)
        logits = bank.router_logits(x, 0, ctx.flags, fwd, rev)
        probs = torch.softmax(logits, -1)
        gate, idx = probs.topk(k, -1)
        y = torch.zeros_like(xf)
        for e in range(bank.config.num_experts):
            hit = idx == e
            rows = hit.any(-1)
            if not bool(rows.any()):  # host sync, as in the reference
                continue
            u = xf[rows] * bank.adapter_scale[0, e] + bank.adapter_bias[0, e]
            out = torch.relu(u @ bank.w1[e].t()).square() @ bank.w2[e].t()
            g = (gate * hit)[rows].sum(-1, keepdim=True)
            y = y.index_add(0, rows.nonzero().squeeze(-1), g * out)
        return y.view(B, T, d)

    return run


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable
    params: list[torch.Tensor]
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)


def one_pass(case: Case, x: torch.Tensor, grad: torch.Tensor, sync) -> tuple[float, float]:
    x.grad = None
    for p in case.params:
        p.grad = None  # a training step's zero_grad(): the backward writes fresh gradients
    t0, c0 = time.perf_counter(), time.process_time()
    out = case.fn(x)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(grad)
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def timed(case: Case, x, grad, reps: int, sync) -> None:
    walls, cpus = zip(*(one_pass(case, x, grad, sync) for _ in range(reps)), strict=True)
    case.wall.append(min(walls))  # the least-disturbed pass: other processes only ever add time
    case.cpu.append(min(cpus))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def ratio_cell(num: list[float], den: list[float], iqr: bool = True) -> str:
    lo, mid, hi = quartiles([a / b for a, b in zip(num, den, strict=True)])
    return f"{mid:.2f} ({lo:.2f}–{hi:.2f})" if iqr else f"{mid:.2f}"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="record", choices=sorted(PRESETS), help="shapes and default rounds")
    p.add_argument("--tokens", type=int, help="tokens per call (T); overrides the preset")
    p.add_argument("--dim", type=int, help="model dimension d; overrides the preset")
    p.add_argument("--hidden", type=int, help="hidden size per expert h; overrides the preset")
    p.add_argument("--experts", type=int, help="number of experts E; overrides the preset")
    p.add_argument("--topk", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--rounds", type=int, help="rounds (default: the preset's)")
    p.add_argument(
        "--reps", type=int, help="passes per round and case; the fastest counts (default: preset's)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--impl", default="auto", choices=["auto", "grouped_mm", "cpu_parallel", "blocked_bmm"])
    p.add_argument("--no-naive", action="store_true", help="skip the (slow) reference-style loop")
    args = p.parse_args()
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    T, d, h, E = args.tokens, args.dim, args.hidden, args.experts
    tok = torch.randint(0, 50000, (1, T), device=device)
    tok[:, :: max(T // 5, 1)] = 50256
    flags = build_router_flags(tok, dtype=dtype)
    torch.manual_seed(0)
    x = torch.randn(1, T, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, T, d, device=device, dtype=dtype)

    print(f"# sb-model bank benchmark — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"machine: {platform.machine()} {dev_name}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; "
        f"{args.dtype}; preset {args.preset}: T={T} d={d} h={h} E={E}; "
        f"{args.rounds} rounds x {args.reps} reps; "
        f"load average at start: {load_average()}"
    )
    print()
    print(
        "| k | mode | impl | dense ms | bank ms | bank/dense wall (IQR) | bank/dense CPU (IQR) "
        "| no-metrics/dense | bare/dense | naive/dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in args.topk:
        cfg = sm.BankConfig(
            model_dim=d, num_layers=1, num_experts=E, ffn_hidden=h, topk=k, expert_impl=args.impl
        )
        bank = sm.SharedExpertBank(cfg, dtype=dtype, device=device)
        variants = {
            "bank": bank,
            "nomet": sm.SharedExpertBank(
                dataclasses.replace(cfg, collect_metrics=False), dtype=dtype, device=device
            ),
            "bare": sm.SharedExpertBank(
                dataclasses.replace(cfg, use_reverse_ema=False, use_adapters=False, collect_metrics=False),
                dtype=dtype,
                device=device,
            ),
        }
        with torch.no_grad():
            bank.w2.normal_(0, 0.02)
            bank.router_w.normal_(0, 0.02)
            for other in variants.values():  # same experts and the same token/flag router columns
                other.w1.copy_(bank.w1)
                other.w2.copy_(bank.w2)
                for name in ("tok", "flags"):
                    a, b = cfg.feature_slices[name]
                    a2, b2 = other.config.feature_slices[name]
                    other.router_w[:, :, a2:b2].copy_(bank.router_w[:, :, a:b])
        impl, _ = choose_expert_impl(bank.config, x, bank.w1.dtype)
        w1 = torch.nn.Parameter(torch.empty(k * h, d, device=device, dtype=dtype))
        init_linear_(w1)
        w2 = torch.nn.Parameter(torch.randn(d, k * h, device=device, dtype=dtype) * 0.02)
        dense = dense_ffn(w1, w2)

        def bank_call(b: sm.SharedExpertBank):
            sched = b.default_schedule(temperature=1.0)
            return lambda inp: b(inp, 0, b.context(flags, sched))

        cases: dict[str, Case] = {}
        for mode in args.modes:
            wrap = (lambda f: torch.compile(f, fullgraph=True)) if mode == "compiled" else (lambda f: f)
            cases[f"{mode}:dense"] = Case("dense", wrap(dense), [w1, w2])
            for name, b in variants.items():
                cases[f"{mode}:{name}"] = Case(name, wrap(bank_call(b)), list(b.parameters()))
            if mode == "eager" and not args.no_naive:
                naive = naive_loop(bank, k)
                sched = bank.default_schedule(temperature=1.0)
                cases["eager:naive"] = Case(
                    "naive",
                    lambda inp, naive=naive, sched=sched, b=bank: naive(inp, b.context(flags, sched)),
                    list(bank.parameters()),
                )
        for _ in range(args.warmup):  # the first compiled call compiles
            for case in cases.values():
                one_pass(case, x, grad, sync)
        for _ in range(args.rounds):
            for case in cases.values():
                timed(case, x, grad, args.reps, sync)
            for b in variants.values():
                b.metrics.reset()
        for mode in args.modes:
            dn, bk = cases[f"{mode}:dense"], cases[f"{mode}:bank"]
            naive_cell = (
                ratio_cell(cases["eager:naive"].wall, dn.wall, iqr=False) if f"{mode}:naive" in cases else "–"
            )
            print(
                f"| {k} | {mode} | {impl} | {statistics.median(dn.wall) * 1e3:.1f} | "
                f"{statistics.median(bk.wall) * 1e3:.1f} | {ratio_cell(bk.wall, dn.wall)} | "
                f"{ratio_cell(bk.cpu, dn.cpu)} | {ratio_cell(cases[f'{mode}:nomet'].wall, dn.wall, False)} | "
                f"{ratio_cell(cases[f'{mode}:bare'].wall, dn.wall, False)} | {naive_cell} |"
            )
    print()
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
