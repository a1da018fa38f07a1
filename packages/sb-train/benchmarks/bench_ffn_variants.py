"""Seconds per training step of each FFN variant (bank, layer_moe active / total, dense) at a preset's sizes.

One process builds the four models with the preset's optimizer and times full optimizer steps (every
micro-batch's forward and backward, then the Muon/Adam step) round-robin, so that every variant sees the same
machine load; the table gives the median step, the ratio to the bank's (the baseline, same run) and the
estimated training time of the preset's steps. Random byte tokens, every expert live.

    uv run python packages/sb-train/benchmarks/bench_ffn_variants.py                  # tiny-compare, 6 rounds
    uv run python packages/sb-train/benchmarks/bench_ffn_variants.py --preset tiny-compare --rounds 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from sb_model import GPT
from sb_train.config_loading import load_config
from sb_train.optimizer import build_optimizer

VARIANTS = (("bank", "active"), ("layer_moe", "active"), ("layer_moe", "total"), ("dense", "active"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-compare")
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per variant (after one warm-up)")
    args = parser.parse_args()

    torch.manual_seed(0)
    setups = []
    for ffn, match in VARIANTS:
        cfg = load_config(args.preset, overrides=[f'model.ffn="{ffn}"', f'model.layer_moe_match="{match}"'])
        model = GPT(cfg.model).train()
        if model.bank is not None:
            model.routing_schedule.set_(active_experts=cfg.model.bank.num_experts)
        opt = build_optimizer(model, cfg.optim)
        name = ffn if ffn != "layer_moe" else f"layer_moe ({match})"
        setups.append((name, cfg, model, opt))
    cfg0 = setups[0][1]
    accum = cfg0.data.grad_accum_steps
    micro = cfg0.data.tokens_per_rank // accum
    tokens = torch.randint(1, cfg0.model.vocab_size, (accum, 1, micro + 1))

    def step(model: GPT, opt: torch.optim.Optimizer) -> tuple[float, float]:
        """(forward+backward seconds, optimizer seconds) of one step."""
        t = time.perf_counter()
        for i in range(accum):
            out = model(tokens[i, :, :-1], tokens[i, :, 1:])
            (out.loss / accum).backward()
        t_opt = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t_opt - t, time.perf_counter() - t_opt

    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    opt_times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    for r in range(args.rounds + 1):
        for name, _, model, opt in setups:
            fb, dt_opt = step(model, opt)
            if r:  # round 0 warms up
                times[name].append(fb + dt_opt)
                opt_times[name].append(dt_opt)

    steps = cfg0.schedule.num_iterations
    print(f"preset {args.preset}: {micro * accum} tokens/step ({accum} x {micro}), {steps} steps; "
          f"{args.rounds} timed steps per variant, round-robin")
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = statistics.median(times[setups[0][0]])
    print("| variant | total params | expert params | median s/step | of which optimizer | ratio to bank | "
          "est. training s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _, model, _ in setups:
        c = model.parameter_counts()
        med = statistics.median(times[name])
        opt_med = statistics.median(opt_times[name])
        print(f"| {name} | {c['total']:,} | {c['experts']:,} | {med:.3f} | {opt_med:.3f} | "
              f"{med / base:.2f}x | {med * steps:.0f} |")


if __name__ == "__main__":
    main()
