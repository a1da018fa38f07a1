"""``sb-train sweep``: run a comparison as one command: variants x seeds, resumable (README, "Sweeps").

    sb-train sweep --preset tiny --vary model.ffn=bank,dense --seeds 3
    sb-train sweep --preset tiny --variant shared:model.bank.topk=1 --variant top2:model.bank.topk=2 --seeds 3
    sb-train sweep --resume runs/sweeps/<sweep id>            # continue a sweep exactly as it was started

The command line becomes a :class:`~sb_train.sweep_plan.SweepPlan` (every variant's configuration resolved
and checked before any run starts) and :func:`sb_train.sweep_runner.run_sweep` runs it. Rerunning the same
command is the same sweep (its id is derived from the arguments unless ``--name`` is given): finished runs
are skipped and interrupted ones resume from their newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

from sb_runlog import read_sweep_manifest
from sb_runlog.sweep_manifest import check_sweep_id, find_sweep, runs_root_of

from sb_train.callbacks import TrainerCallback
from sb_train.cli_errors import debug_requested, run_cli
from sb_train.config import ConfigError
from sb_train.config_loading import preset_names
from sb_train.sweep_plan import (
    SweepPlan,
    Variant,
    describe_difference,
    parse_seeds,
    parse_variant,
    parse_vary,
    plan_from_identity,
    resolve_variants,
)
from sb_train.sweep_runner import open_manifest, run_sweep

__all__ = ["build_parser", "main", "plan_from_args"]

PLAN_ARGS = ("preset", "config", "overrides", "arms", "seeds", "nproc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sb-train sweep",
        description="Train every variant with every seed, each run its own run folder, tracked in a sweep "
        "manifest (<out-dir>/sweeps/<sweep id>/sweep.json). Rerun the same command to continue.",
        epilog="Judge the result with: sb-analysis compare --sweep <sweep folder or id>. Presets: "
        + ", ".join(preset_names()),
    )
    p.add_argument("--preset", help="configuration preset of every run (default: tiny)")
    p.add_argument("--config", action="append", metavar="FILE.toml", help="TOML file(s) after the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override for every variant, e.g. --set schedule.num_iterations=150")
    p.add_argument("--vary", action="append", dest="arms", metavar="KEY=V1,V2,...",
                   type=lambda s: ("vary", s),
                   help="one variant per value, named by the value, e.g. --vary model.ffn=bank,dense")
    p.add_argument("--variant", action="append", dest="arms", metavar="NAME:KEY=V[,KEY=V...]",
                   type=lambda s: ("variant", s),
                   help="one named variant of several keys, e.g. --variant top2:model.bank.topk=2,"
                   "model.bank.ffn_hidden=128 (repeatable; variants keep the command line's order, the "
                   "first is compare's default baseline)")
    p.add_argument("--seeds", help="a count (3 = seeds 0, 1, 2; the default) or a list (0,5,7); sets "
                   "run.seed, which seeds the model's initialisation and every random draw of training")
    p.add_argument("--allow-one-seed", action="store_true",
                   help="allow --seeds 1 (no confidence interval or paired test is possible then)")
    p.add_argument("--name", help="the sweep id (default: derived from the arguments, so that rerunning the "
                   "same command continues the same sweep)")
    p.add_argument("--out-dir", help="folder of the run folders; the sweep folder is <out-dir>/sweeps/<id> "
                   "(default: the preset's run.out_dir)")
    p.add_argument("--nproc", type=int, help="0 (default): runs in this process, one after the other; "
                   "N >= 1: each run under torchrun with N processes")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in this folder (or of this id "
                   "under --out-dir) with the arguments it was started with")
    p.add_argument("--dry-run", action="store_true", help="check everything and list the runs; train nothing")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (or set SB_DEBUG=1)")
    return p


def plan_from_args(args: argparse.Namespace) -> SweepPlan:
    """The plan the command line describes (not yet resolved; see resolve_variants)."""
    preset = args.preset or "tiny"
    variants: list[Variant] = []
    for kind, text in args.arms or []:
        variants.extend(parse_vary(text) if kind == "vary" else [parse_variant(text)])
    if not variants:
        variants = [Variant("base")]
    if args.nproc is not None and args.nproc < 0:
        raise ConfigError(f"--nproc {args.nproc}: use 0 (in this process) or the number of processes per run")
    out_dir = args.out_dir or _preset_out_dir(preset, args.config or [])
    return SweepPlan(preset=preset, variants=tuple(variants),
                     seeds=parse_seeds(args.seeds or "3", allow_one=args.allow_one_seed),
                     overrides=tuple(args.overrides or ()), config_files=tuple(args.config or ()),
                     nproc=args.nproc or 0, out_dir=out_dir)


def _preset_out_dir(preset: str, config_files: list[str]) -> str:
    from sb_train.config_loading import load_config

    return load_config(preset, config_files=config_files).run.out_dir


def _plan_and_id(args: argparse.Namespace) -> tuple[SweepPlan, str]:
    if not args.resume:
        plan = plan_from_args(args)
        sweep_id = args.name or plan.default_id()
        check_sweep_id(sweep_id)
        return plan, sweep_id
    folder = find_sweep(args.resume, [args.out_dir or "runs"])
    manifest = read_sweep_manifest(folder)
    plan = plan_from_identity(manifest.get("plan", {}), str(runs_root_of(folder)))
    if any(getattr(args, name) is not None for name in PLAN_ARGS):
        given = plan_from_args(args).identity()
        if given != plan.identity():
            raise ConfigError(f"--resume {args.resume}: the sweep was started with other arguments "
                              f"({describe_difference(plan.identity(), given)}); leave them out to continue "
                              "it as it was started")
    if args.name and args.name != folder.name:
        raise ConfigError(f"--resume {args.resume}: that sweep's id is {folder.name!r}, not --name "
                          f"{args.name!r}")
    return plan, folder.name


def _sweep(argv: list[str], callbacks: Iterable[TrainerCallback]) -> int:
    args = build_parser().parse_args(argv)
    plan, sweep_id = _plan_and_id(args)
    resolve_variants(plan)  # every override checked before any run starts
    folder, manifest = open_manifest(plan, sweep_id)
    if args.dry_run:
        print(f"sweep {sweep_id} ({folder}): preset {plan.preset!r}, seeds {list(plan.seeds)}")
        for run in manifest["runs"]:
            print(f"  {run['run_id']:<48} {run['state']:<9} {' '.join(_overrides(plan, run['variant']))}")
        return 0
    return run_sweep(plan, sweep_id, callbacks=callbacks)


def _overrides(plan: SweepPlan, name: str) -> tuple[str, ...]:
    return next(v.overrides for v in plan.variants if v.name == name)


def main(argv: Sequence[str] | None = None, *, callbacks: Iterable[TrainerCallback] = ()) -> int:
    """``sb-train sweep ...``; bad input is one line on stderr (exit 2), see sb_train.cli_errors."""
    argv = list(sys.argv[2:] if argv is None else argv)
    return run_cli("sb-train sweep", lambda: _sweep(argv, callbacks), debug=debug_requested(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
