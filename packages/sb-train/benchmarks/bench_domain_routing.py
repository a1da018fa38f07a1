"""What the per-domain routing measurement (domains.csv) costs at a validation, against a plain evaluation
forward over the same tokens (the baseline, measured in the same run, rounds interleaved).

    uv run python packages/sb-train/benchmarks/bench_domain_routing.py               # tiny, 16 x 1024 tokens
    uv run python packages/sb-train/benchmarks/bench_domain_routing.py --preset smoke --rounds 9

Run it from the folder where the preset's data lives (or will be built): data/python-docs/.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from sb_train.config_loading import load_config
from sb_train.trainer import Trainer


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokens", type=int, default=16384, help="data.domain_val_tokens")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(args.preset, overrides=[f'run.out_dir="{out}"', "run.warmup_steps=0",
                                                  f"data.domain_val_tokens={args.tokens}"])
        trainer = Trainer(cfg)
        try:
            probe = trainer.domains
            if probe is None:
                raise SystemExit("the validation data carry no domain labels: nothing to measure")
            model = trainer.model
            model.eval()
            trainer.apply_schedule(cfg.schedule.num_iterations, evaluation=True)

            @torch.no_grad()
            def plain() -> None:
                for inputs, _ in probe.batches:
                    with trainer._autocast():
                        model(inputs[None], inputs[None].long())

            def measure() -> None:
                probe.measure(model, 0, trainer._autocast)

            plain(), measure()  # first calls (allocations) untimed
            times: dict[str, list[float]] = {"plain": [], "measure": []}
            for _ in range(args.rounds):
                for name, fn in (("plain", plain), ("measure", measure)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        finally:
            trainer.close()
    ratios = [m / p for p, m in zip(times["plain"], times["measure"], strict=True)]
    tokens = len(probe.batches) * cfg.data.val_seq_len
    print(f"{args.preset}: {len(probe.batches)} forwards x {cfg.data.val_seq_len} tokens ({tokens:,}) per "
          f"rank; {args.rounds} interleaved rounds; CPU {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| what | median s | ratio to the plain forward |")
    print("|---|---|---|")
    print(f"| plain evaluation forward (baseline) | {statistics.median(times['plain']):.3f} | 1.00 |")
    print(f"| domain measurement (uncompiled forward + RoutingTrace + counts) | "
          f"{statistics.median(times['measure']):.3f} | {statistics.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
