"""Running a sweep: every (variant, seed) run in turn, resumably, with its state kept in the sweep manifest.

:func:`run_sweep` takes a checked :class:`~sb_train.sweep_plan.SweepPlan`. Runs go seed by seed (seed 0 of
every variant first), so an interrupted sweep already holds complete pairs for ``sb-analysis compare``. Each
run is an ordinary ``sb-train`` run in ``<out_dir>/<sweep id>-<variant>-s<seed>/``, started in this process
or, with ``nproc >= 1``, by ``torchrun`` in a child process; its run.json gets a ``sweep`` entry (id, variant,
seed). The manifest (docs/log-format.md §11) is rewritten atomically whenever a run's state changes. A rerun
skips finished (and aborted) runs and resumes the others from their newest complete checkpoint (README,
"Sweeps").
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sb_runlog import (
    RUN_FILE,
    STATUS_FILE,
    read_status,
    read_sweep_manifest,
    sweep_dir,
    utc_now,
    write_sweep_manifest,
)
from sb_runlog.sweep_manifest import SWEEP_FILE

from sb_train.callbacks import TrainerCallback
from sb_train.checkpoint import list_checkpoints
from sb_train.checkpoint.layout import CHECKPOINTS_DIR
from sb_train.cli_errors import EXIT_ABORTED
from sb_train.config import ConfigError
from sb_train.errors import RunError, RunLockedError
from sb_train.run_lock import LOCK_FILE, RunLock
from sb_train.sweep_plan import SweepPlan, describe_difference

if TYPE_CHECKING:
    from sb_train.trainer import Trainer

__all__ = ["DISCARDED_DIR", "SweepTag", "open_manifest", "run_sweep"]

DISCARDED_DIR = "discarded"  # in the sweep folder: run folders moved aside (started, no checkpoint to resume)
_STOP_CODES = (128 + int(signal.SIGINT), 128 + int(signal.SIGTERM))
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"[sb-train sweep] {line}", file=sys.stderr, flush=True)


class SweepTag(TrainerCallback):
    """Adds ``"sweep": {"id", "variant", "seed"}`` to the run's run.json once the run has started."""

    def __init__(self, sweep_id: str, variant: str, seed: int) -> None:
        self.entry = {"id": sweep_id, "variant": variant, "seed": seed}

    def on_train_start(self, trainer: Trainer) -> None:
        logger = trainer.logger
        if trainer.env.is_main and logger.enabled:
            logger.writer.write_header(sweep=dict(self.entry))


def open_manifest(plan: SweepPlan, sweep_id: str) -> tuple[Path, dict[str, Any]]:
    """The sweep folder and its manifest: read and checked against ``plan`` when the sweep exists, else a
    new one with every run pending. ConfigError when the existing sweep was started with another plan."""
    folder = sweep_dir(plan.out_dir, sweep_id)
    identity = plan.identity()
    if (folder / SWEEP_FILE).is_file():
        manifest = read_sweep_manifest(folder)
        old = manifest.get("plan", {})
        if old != identity:
            raise ConfigError(
                f"sweep {sweep_id!r} in {folder} was started with other arguments "
                f"({describe_difference(old, identity)}); rerun its original command, continue it with "
                f"`sb-train sweep --resume {folder}`, or choose another --name")
        changed = [name for name, digest in plan.variant_hashes.items()
                   if manifest.get("variant_hashes", {}).get(name) not in (None, digest)]
        if changed:
            raise ConfigError(
                f"sweep {sweep_id!r}: variant(s) {', '.join(changed)} now resolve to another configuration "
                "than when the sweep started (a preset, a --config file or the code changed); runs of the "
                "two would not be comparable: start a new sweep with --name")
        return folder, manifest
    runs = [{"variant": v.name, "seed": seed, "run_id": plan.run_id(sweep_id, v, seed), "state": "pending",
             "exit_code": None, "wall_s": 0.0, "final_val_loss": None}
            for seed in plan.seeds for v in plan.variants]
    manifest = {"sweep_id": sweep_id, "preset": plan.preset, "seeds": list(plan.seeds),
                "variants": [{"name": v.name, "overrides": list(v.overrides)} for v in plan.variants],
                "plan": identity, "variant_hashes": dict(plan.variant_hashes), "runs": runs,
                "command": _command_line()}
    return folder, manifest


def run_sweep(plan: SweepPlan, sweep_id: str, *, callbacks: Iterable[TrainerCallback] = (),
              log: Log = _stderr) -> int:
    """Run (or continue) the sweep; the exit code: 0 all finished, 3 some aborted, 130/143 stopped by a
    signal (rerun to continue), else the failed run's code (rerun to retry it)."""
    folder, manifest = open_manifest(plan, sweep_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(folder).acquire()
    except RunLockedError as exc:
        raise RunError(f"sweep {sweep_id!r} is being run by another process: {exc}") from None
    try:
        write_sweep_manifest(folder, manifest)
        return _run_all(plan, folder, manifest, list(callbacks), log)
    finally:
        lock.release()


def _run_all(plan: SweepPlan, folder: Path, manifest: dict[str, Any], callbacks: list[TrainerCallback],
             log: Log) -> int:
    runs = manifest["runs"]
    variants = {v.name: v for v in plan.variants}
    total = len(runs)
    log(f"sweep {manifest['sweep_id']}: {len(plan.variants)} variant(s) x {len(plan.seeds)} seed(s) = "
        f"{total} runs of preset {plan.preset!r}; manifest {folder / SWEEP_FILE}")
    aborted = 0
    for index, entry in enumerate(runs, start=1):
        run_dir = Path(plan.out_dir) / entry["run_id"]
        what = f"run {index}/{total} ({entry['variant']}, seed {entry['seed']})"
        state = _reconciled_state(entry, run_dir)
        if state in ("finished", "aborted"):
            aborted += state == "aborted"
            if entry["state"] != state:
                entry["state"] = state
                write_sweep_manifest(folder, manifest)
            log(f"{what}: already {state}, skipped")
            continue
        resume = _prepare_run_dir(run_dir, folder, log)
        log(f"{what}: resuming {run_dir} from its newest checkpoint" if resume
            else f"{what}: starting {run_dir}")
        entry.update(state="running", started_at=_now())
        write_sweep_manifest(folder, manifest)
        args = plan.run_args(variants[entry["variant"]], entry["seed"], entry["run_id"])
        if resume:
            args += ["--resume", str(run_dir)]
        tag = SweepTag(manifest["sweep_id"], entry["variant"], entry["seed"])
        t0 = time.monotonic()
        code = _run_one(args, plan.nproc, tag, callbacks)
        wall = time.monotonic() - t0
        entry.update(state=_state_of(code), exit_code=code, wall_s=round(entry.get("wall_s", 0.0) + wall, 3),
                     ended_at=_now(), final_val_loss=_final_val_loss(run_dir))
        write_sweep_manifest(folder, manifest)
        if entry["state"] == "stopped":
            log(f"{what}: stopped by a signal after {_clock(wall)}; rerun the same command to continue")
            return code
        if entry["state"] == "failed":
            log(f"{what}: failed (exit code {code}) after {_clock(wall)}; see the error above and "
                f"{run_dir / STATUS_FILE}; rerun the same command to retry it")
            return code
        aborted += entry["state"] == "aborted"
        log(f"{what}: {entry['state']} in {_clock(wall)}, val loss {_fmt_loss(entry['final_val_loss'])}"
            + _eta(runs, index))
    done = sum(r["state"] == "finished" for r in runs)
    log(f"sweep {manifest['sweep_id']}: {done}/{total} finished, {aborted} aborted; judge it with "
        f"`sb-analysis compare --sweep {folder}`")
    return EXIT_ABORTED if aborted else 0


def _reconciled_state(entry: dict[str, Any], run_dir: Path) -> str:
    """The run's state from the manifest and its folder: a run whose status.json says finished is finished
    (its process may have died before the manifest was updated); a finished run whose folder is gone is
    run again."""
    has_status = (run_dir / STATUS_FILE).is_file()
    if entry["state"] in ("finished", "aborted") and not (run_dir / RUN_FILE).is_file():
        return "pending"
    if entry["state"] not in ("finished", "aborted") and has_status and (
        read_status(run_dir).get("state") == "finished"
    ):
        return "finished"
    return str(entry["state"])


def _prepare_run_dir(run_dir: Path, folder: Path, log: Log) -> bool:
    """Whether the run resumes (its folder has a complete checkpoint). A folder that holds a started run but
    no checkpoint cannot be continued: it is moved to ``<sweep>/discarded/`` (kept, never deleted)."""
    if not run_dir.is_dir():
        return False
    if list_checkpoints(run_dir / CHECKPOINTS_DIR):
        return True
    if not [p for p in run_dir.iterdir() if p.name != LOCK_FILE]:
        return False
    with RunLock(run_dir):  # refuses a folder a live trainer holds
        pass
    target = folder / DISCARDED_DIR / run_dir.name
    n = 1
    while target.exists():
        target = folder / DISCARDED_DIR / f"{run_dir.name}.{n}"
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), target)
    log(f"{run_dir} was started but has no complete checkpoint: moved to {target}, starting it again")
    return False


def _run_one(args: list[str], nproc: int, tag: SweepTag, callbacks: list[TrainerCallback]) -> int:
    if nproc == 0:
        from sb_train.cli import main as train_main

        return train_main(args, callbacks=[tag, *callbacks])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sb_train.sweep_worker", "--tag", json.dumps(tag.entry), "--", *args]
    proc = subprocess.Popen(cmd)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reaches the child too; wait for its checkpoint
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command_line() -> str | None:
    """The sweep's command as typed (when it came from the sb-train command line), for the manifest."""
    return " ".join(["sb-train", "sweep", *sys.argv[2:]]) if sys.argv[1:2] == ["sweep"] else None


def _state_of(code: int) -> str:
    if code == 0:
        return "finished"
    if code == EXIT_ABORTED:
        return "aborted"
    if code in _STOP_CODES:
        return "stopped"
    return "failed"


def _final_val_loss(run_dir: Path) -> float | None:
    try:
        value = read_status(run_dir).get("final_val_loss")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int | float) else None


def _eta(runs: list[dict[str, Any]], index: int) -> str:
    left = sum(r["state"] not in ("finished", "aborted") for r in runs[index:])
    times = [r["wall_s"] for r in runs if r["state"] == "finished" and r.get("wall_s")]
    if not left:
        return "; none left"
    if not times:
        return f"; {left} left"
    mean = sum(times) / len(times)
    return f"; {left} left, ETA {_clock(mean * left)} (mean of {len(times)} finished run(s))"


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _now() -> str:
    return utc_now()
