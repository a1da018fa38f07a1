"""``sb-train``: train a SwitchBank GPT from a preset.

    sb-train --preset tiny                                   # CPU, ~10 min, builds its data if missing
    sb-train --preset smoke --set run.out_dir=/tmp/runs      # seconds
    torchrun --nproc_per_node=8 -m sb_train --preset record  # the record configuration on 8 GPUs
    sb-train --preset record --print-config                  # the resolved configuration as TOML
    sb-train --preset tiny --resume auto                     # continue the newest run of this preset
    sb-train sample runs/<run-id> --prompt "def "            # text from the newest checkpoint of a run

``sample`` as the first argument runs :mod:`sb_train.sample`; anything else trains.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sb_train.config import ConfigError, TrainConfig
from sb_train.config_loading import load_config, preset_names

if TYPE_CHECKING:
    from sb_train.callbacks import TrainerCallback


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sb-train",
        description="Train a SwitchBank GPT (one shared bank of FFN experts routed from every layer).",
        epilog="Presets: " + ", ".join(preset_names()) + ". Keys: see --print-config; set any with "
        "--set section.key=value (sections: model, data, optim, schedule, run). "
        "Generate text from a run: sb-train sample RUN_OR_CHECKPOINT --prompt TEXT (see sb-train sample -h).",
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


def main(argv: Sequence[str] | None = None, *, callbacks: Iterable[TrainerCallback] = ()) -> int:
    """``sb-train [--preset ...]`` trains (with ``callbacks`` installed in the trainer); ``sb-train sample
    ...`` generates text. Exit codes: 0 done, 2 usage/configuration/checkpoint error, 3 run aborted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sample"]:
        from sb_train.sample import main as sample_main

        return sample_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"sb-train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    from sb_train.checkpoint import CheckpointError
    from sb_train.distributed import teardown_distributed
    from sb_train.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=args.resume, callbacks=callbacks)
        result = trainer.run()
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"sb-train: {exc}", file=sys.stderr)
        teardown_distributed()
        return 2
    teardown_distributed()
    if result.state == "aborted":
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
