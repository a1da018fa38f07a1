"""Forward+backward throughput of a small SwitchBank GPT against a dense GPT with the same active parameters.

The dense model is the same GPT with ``ffn="dense"``: every layer owns a ReLU² FFN of ``bank.topk *
bank.ffn_hidden`` hidden units, so a token meets as many FFN weights as in the bank (top-k of E experts). Both
models run in the same process, alternating, and the table reports median tokens/s and the ratio bank / dense.

    uv run python packages/sb-model/benchmarks/bench_gpt.py [--seq-len 512] [--iters 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sb_model import GPT, BankConfig, GPTConfig


def small_config(topk: int, **kw) -> GPTConfig:
    base = dict(
        vocab_size=1024,
        model_dim=128,
        num_layers=4,
        head_dim=32,
        num_value_embeds=1,
        max_seq_len=4096,
        attention="sdpa",
        block_size=128,
        skip_attn_layers=(),
        skip_map=((3, 1),),
        eod_token_id=0,
        bank=BankConfig(num_experts=8, ffn_hidden=512, topk=topk),
    )
    base.update(kw)
    return GPTConfig(**base)


def step_time(model: GPT, tok: torch.Tensor) -> float:
    t = time.perf_counter()
    out = model(tok[:, :-1], tok[:, 1:])
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for topk in (1, 2):
        models = {
            "SwitchBank": GPT(small_config(topk=topk)),
            "dense (equal active)": GPT(small_config(topk=topk, ffn="dense")),
        }
        for m in models.values():
            m.routing_schedule.set_(temperature=1.0, logit_cap=0.0)
        tok = torch.randint(1, 1024, (args.batch, args.seq_len + 1))
        tok[:, ::200] = 0
        times: dict[str, list[float]] = {k: [] for k in models}
        for m in models.values():  # warm-up
            step_time(m, tok)
        for _ in range(args.iters):
            for name, m in models.items():
                times[name].append(step_time(m, tok))
        n_tok = args.batch * args.seq_len
        tps = {k: n_tok / statistics.median(v) for k, v in times.items()}
        for name, m in models.items():
            c = m.parameter_counts()
            ffn = c["ffn_bank"] + c["adapters"] + c["dense_ffn"]
            rows.append((topk, name, c["total"], ffn, tps[name], tps[name] / tps["dense (equal active)"]))
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} x {args.seq_len} tokens, "
        f"d=128, 4 layers, E=8, ffn_hidden=512, median of {args.iters}"
    )
    print()
    print("| top-k | model | params | FFN params | fwd+bwd tokens/s | ratio vs dense |")
    print("|---|---|---:|---:|---:|---:|")
    for topk, name, total, ffn, tps_v, ratio in rows:
        print(f"| {topk} | {name} | {total:,} | {ffn:,} | {tps_v:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
