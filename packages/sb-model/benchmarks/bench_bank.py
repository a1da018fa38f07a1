"""Bank layer forward+backward vs a dense ReLU² FFN of equal active parameters vs a naive per-expert loop.

    uv run python packages/sb-model/benchmarks/bench_bank.py            # CPU defaults
    uv run python packages/sb-model/benchmarks/bench_bank.py --tokens 12288 --dim 896 --hidden 1024 \
        --device cuda --dtype bfloat16                                  # the record's shapes on a GPU

Protocol: every round runs the implementations back to back (interleaved, so machine noise hits them
alike), each timed as the fastest of ``--reps`` forward+backward passes with a materialised random upstream
gradient; the table reports the median and inter-quartile range of the per-round ratios against the dense FFN
measured in the same round. "bare bank" is the same bank without the reverse-EMA feature, adapters and
metrics (router on the normed token and flags only), to show what those features cost. Goal (CPU): the top-1
bank at most 1.15x the dense FFN.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import time

import torch

import sb_model as sm


def dense_ffn(w1: torch.Tensor, w2: torch.Tensor):
    def run(x):
        return torch.relu(x @ w1.t()).square() @ w2.t()

    return run


def naive_loop(bank: sm.SharedExpertBank, k: int):
    """The reference's dispatch: router, top-k, then a Python loop over experts with boolean masks."""

    def run(x, ctx):
        B, T, d = x.shape
        xf = x.reshape(-1, d)
        fwd, rev = bank._ema_features(x, 0, ctx)  # same router features as the bank
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


def timed(fn, x, grad, reps: int, sync) -> float:
    times = []
    for _ in range(reps):
        x.grad = None
        t0 = time.perf_counter()
        out = fn(x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad)
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)  # the least-disturbed pass: other processes only ever add time


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--impl", default="auto", choices=["auto", "grouped_mm", "blocked_bmm"])
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    T, d, h, E = args.tokens, args.dim, args.hidden, args.experts
    tok = torch.randint(0, 50000, (1, T), device=device)
    tok[:, :: max(T // 5, 1)] = 50256
    flags = sm.build_router_flags(tok, dtype=dtype)
    torch.manual_seed(0)
    x = torch.randn(1, T, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, T, d, device=device, dtype=dtype)

    print(f"# sb-model bank benchmark — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"machine: {platform.machine()} {dev_name}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; "
        f"{args.dtype}; T={T} d={d} h={h} E={E}; {args.rounds} rounds x {args.reps} reps"
    )
    print()
    print(
        "| k | impl | dense ms | bank ms | naive ms | bank/dense (IQR) | naive/dense (IQR) | bank/naive "
        "| bare bank/dense (IQR) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k in args.topk:
        cfg = sm.BankConfig(
            model_dim=d, num_layers=1, num_experts=E, ffn_hidden=h, topk=k, expert_impl=args.impl
        )
        bank = sm.SharedExpertBank(cfg, dtype=dtype, device=device)
        bare_cfg = dataclasses.replace(cfg, use_reverse_ema=False, use_adapters=False, collect_metrics=False)
        bare = sm.SharedExpertBank(bare_cfg, dtype=dtype, device=device)
        with torch.no_grad():
            bank.w2.normal_(0, 0.02)
            bank.router_w.normal_(0, 0.02)
            bare.w1.copy_(bank.w1)
            bare.w2.copy_(bank.w2)
        sched = bank.default_schedule(temperature=1.0)
        impl, _ = bank._expert_impl(x)
        w1 = torch.nn.Parameter(torch.empty(k * h, d, device=device, dtype=dtype))
        sm.init_linear_(w1)
        w2 = torch.nn.Parameter(torch.randn(d, k * h, device=device, dtype=dtype) * 0.02)
        dense = dense_ffn(w1, w2)
        naive = naive_loop(bank, k)

        def bank_fn(inp, bank=bank, sched=sched):
            return bank(inp, 0, bank.context(flags, sched))

        def naive_fn(inp, bank=bank, sched=sched, naive=naive):
            return naive(inp, bank.context(flags, sched))

        def bare_fn(inp, bare=bare):
            return bare(inp, 0, bare.context(flags, bare.default_schedule()))

        fns = {"dense": dense, "bank": bank_fn, "bare": bare_fn, "naive": naive_fn}
        for _ in range(args.warmup):
            for fn in fns.values():
                timed(fn, x, grad, 1, sync)
        per_round: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                per_round[name].append(timed(fn, x, grad, args.reps, sync))
            bank.metrics.reset()
        bd = [b / dn for b, dn in zip(per_round["bank"], per_round["dense"], strict=True)]
        nd = [n / dn for n, dn in zip(per_round["naive"], per_round["dense"], strict=True)]
        rd = [b / dn for b, dn in zip(per_round["bare"], per_round["dense"], strict=True)]
        bn = [b / n for b, n in zip(per_round["bank"], per_round["naive"], strict=True)]
        ms = {name: statistics.median(v) * 1e3 for name, v in per_round.items()}
        q_bd, q_nd, q_bn, q_rd = quartiles(bd), quartiles(nd), quartiles(bn), quartiles(rd)
        print(
            f"| {k} | {impl} | {ms['dense']:.1f} | {ms['bank']:.1f} | {ms['naive']:.1f} | "
            f"{q_bd[1]:.2f} ({q_bd[0]:.2f}–{q_bd[2]:.2f}) | {q_nd[1]:.2f} ({q_nd[0]:.2f}–{q_nd[2]:.2f}) | "
            f"{q_bn[1]:.2f} | {q_rd[1]:.2f} ({q_rd[0]:.2f}–{q_rd[2]:.2f}) |"
        )


if __name__ == "__main__":
    main()
