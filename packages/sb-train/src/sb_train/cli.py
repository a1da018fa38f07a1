"""``sb-train``: train a SwitchBank GPT from a preset.

    sb-train --preset tiny                                   # CPU, ~10 min, builds its data if missing
    sb-train --preset smoke --set run.out_dir=/tmp/runs      # seconds
    torchrun --nproc_per_node=8 -m sb_train --preset record  # the record configuration on 8 GPUs
    sb-train --preset record --print-config                  # the resolved configuration as TOML
    sb-train --preset tiny --resume auto                     # continue the newest run of this preset
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sb_train.config import ConfigError, TrainConfig, load_config, preset_names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sb-train",
        description="Train a SwitchBank GPT (one shared bank of FFN experts routed from every layer).",
        epilog="Presets: " + ", ".join(preset_names()) + ". Keys: see --print-config; set any with "
        "--set section.key=value (sections: model, data, optim, schedule, run).",
    )
    p.add_argument("--preset", default="tiny", help="configuration preset (default: tiny)")
    p.add_argument("--config", action="append", default=[], metavar="FILE.toml",
                   help="TOML file(s) applied after the preset, in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one key, e.g. --set schedule.num_iterations=100 (TOML literal values)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue from a checkpoint: 'auto' = the newest complete checkpoint of this preset "
                   "under the output folder (a fresh start when there is none), or a checkpoint/run folder")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (run.wandb_mode, "
                   "default offline: no network needed)")
    p.add_argument("--out", metavar="DIR", help="output folder for run directories (run.out_dir)")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.wandb:
        overrides.append("run.wandb=true")
    if args.out:
        overrides.append(f"run.out_dir={_toml_string(args.out)}")
    return load_config(args.preset, config_files=args.config, overrides=overrides)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"sb-train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    from sb_train.distributed import teardown_distributed
    from sb_train.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=args.resume)
        result = trainer.run()
    except (FileNotFoundError, ValueError) as exc:
        print(f"sb-train: {exc}", file=sys.stderr)
        teardown_distributed()
        return 2
    teardown_distributed()
    if result.state == "aborted":
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
