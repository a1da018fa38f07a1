"""``sb-train``: train a SwitchBank GPT from a preset.

    sb-train --preset tiny                                   # CPU, ~10 min, builds its data if missing
    sb-train --preset smoke --set run.out_dir=/tmp/runs      # seconds
    torchrun --nproc_per_node=8 -m sb_train --preset record  # the record configuration on 8 GPUs
    sb-train --preset record --print-config                  # the resolved configuration as TOML
    sb-train --preset tiny --resume auto                     # continue the newest run of this preset
    sb-train sample runs/<run-id> --prompt "def "            # text from the newest checkpoint of a run
    sb-train sweep --preset tiny --vary model.ffn=bank,dense --seeds 3   # variants x seeds (sb_train.sweep)
    sb-train serve runs/<run-id>                             # an OpenAI-compatible server on 127.0.0.1:8000

``sample`` as the first argument runs :mod:`sb_train.sample`, ``sweep`` :mod:`sb_train.sweep`, ``serve``
:mod:`sb_train.serve.cli`; anything else trains. Errors and exit codes: :mod:`sb_train.cli_errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sb_train.cli_errors import EXIT_ABORTED, debug_requested, run_cli, stop_exit_code
from sb_train.config import TrainConfig
from sb_train.config_loading import load_config, preset_names

if TYPE_CHECKING:
    from sb_train.callbacks import TrainerCallback


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sb-train",
        description="Train a SwitchBank GPT (one shared bank of FFN experts routed from every layer).",
        epilog="Presets: " + ", ".join(preset_names()) + ". Keys: see --print-config; set any with "
        "--set section.key=value (sections: model, data, optim, schedule, run). "
        "Generate text from a run: sb-train sample RUN_OR_CHECKPOINT --prompt TEXT (see sb-train sample -h). "
        "Variants x seeds: sb-train sweep (see sb-train sweep -h).",
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
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: go on with settings that differ from the checkpoint's (the model's "
                   "must not); run.json keeps every configuration in its segments")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (or set SB_DEBUG=1)")
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
    ...`` generates text. Bad input is one line on stderr (``--debug`` or ``SB_DEBUG=1``: the traceback too).
    Exit codes (:mod:`sb_train.cli_errors`): 0 finished, 1 the file system refused, 2 bad input, 3 the run
    aborted itself, 130/143 stopped by SIGINT/SIGTERM after saving a checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sample"]:
        from sb_train.sample import main as sample_main

        return sample_main(argv[1:])
    if argv[:1] == ["sweep"]:
        from sb_train.sweep import main as sweep_main

        return sweep_main(argv[1:], callbacks=callbacks)
    if argv[:1] == ["serve"]:
        from sb_train.serve.cli import main as serve_main

        return serve_main(argv[1:])
    return run_cli("sb-train", lambda: _train(argv, callbacks), debug=debug_requested(argv))


def _train(argv: list[str], callbacks: Iterable[TrainerCallback]) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    if args.print_config:
        sys.stdout.write(cfg.to_toml())
        return 0
    from sb_train.distributed import teardown_distributed
    from sb_train.trainer import Trainer

    try:
        trainer = Trainer(cfg, resume=args.resume, callbacks=callbacks,
                          allow_config_change=args.allow_config_change)
        result = trainer.run()
    finally:
        teardown_distributed()
    if result.state == "aborted":
        return EXIT_ABORTED
    if result.state == "stopped":
        return stop_exit_code(result.stop_signal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
