"""Shared pieces of the trainer tests: smoke configurations, CSV loss reading, process launching."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from sb_train.builtin_corpus import write_python_docs_shards
from sb_train.config import TrainConfig
from sb_train.config_loading import load_config


def prepare_data(folder: Path) -> tuple[str, str]:
    """Smoke shards (byte tokens of the Python docs, 400 kB) in ``folder``; returns the two globs."""
    if not list(folder.glob("pydocs_train_*.bin")):
        write_python_docs_shards(folder, "pydocs", max_bytes=400_000)
    return str(folder / "pydocs_train_*.bin"), str(folder / "pydocs_val_*.bin")


def smoke_overrides(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    train, val = prepare_data(data_dir)
    return [
        f"data.train_files={train!r}".replace("'", '"'),
        f"data.val_files={val!r}".replace("'", '"'),
        f'run.out_dir="{out_dir}"',
        "run.threads=1",
        *extra,
    ]


def smoke_config(data_dir: Path, out_dir: Path, *extra: str) -> TrainConfig:
    return load_config("smoke", overrides=smoke_overrides(data_dir, out_dir, *extra))


def read_losses(run_dir: Path) -> dict[int, tuple[float | None, float | None]]:
    """step -> (train loss, val loss) from scalars.csv; a later row for the same step wins (resume)."""
    out: dict[int, tuple[float | None, float | None]] = {}
    with open(run_dir / "scalars.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            loss = float(row["loss"]) if row["loss"] else None
            val = float(row["val_loss"]) if row["val_loss"] else None
            out[int(row["step"])] = (loss, val)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAULT_WORKER = Path(__file__).with_name("fault_worker.py")


def launch(args: list[str], cwd: Path, world_size: int = 1, kill_after_step: int | None = None,
           timeout: float = 400) -> list[subprocess.CompletedProcess]:
    """Run ``python -m sb_train ARGS`` as ``world_size`` processes (torchrun's environment, gloo); with
    ``kill_after_step`` every process dies (exit code 17) right after that step (tests/fault_worker.py)."""
    port = str(free_port())
    entry = ["-m", "sb_train"] if kill_after_step is None else [str(FAULT_WORKER), str(kill_after_step)]
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if world_size > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *entry, *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    return results


def only_run_dir(out_dir: Path) -> Path:
    runs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run directory in {out_dir}, found {runs}"
    return runs[0]
