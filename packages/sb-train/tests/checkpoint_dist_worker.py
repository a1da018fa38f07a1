"""One rank of the 2-process checkpoint test: asserts on every rank and writes a JSON report.

test_checkpoint.py forks the ranks and calls `run_rank` (forking skips a second torch import, which costs
seconds on a busy machine). By hand: ``RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 python
checkpoint_dist_worker.py ROOT REPORT_DIR`` and the same with RANK=1.
"""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from sb_train.checkpoint import CheckpointError, CheckpointManager
from sb_train.rng_state import capture_rng_state, restore_rng_state
from sb_train.stop_signal import any_rank_requested

VAL_LOSSES = {1: 3.0, 2: 2.5, 3: 2.7}


def main(root: Path, report_dir: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)
    manager = CheckpointManager(root, keep_last=2)
    assert (manager.rank, manager.world_size) == (rank, 2)
    assert manager.resolve("auto") is None

    expected_draw = None
    for step, val_loss in VAL_LOSSES.items():
        shared = {"step": step, "model": {"w": torch.arange(4.0) * step}} if rank == 0 else {}
        per_rank = {"rank": rank, "x": torch.full((3,), 10.0 * rank + step), "rng": capture_rng_state()}
        expected_draw = torch.rand(4)  # what the restored RNG must draw again
        path = manager.save(step, shared, per_rank, val_loss=val_loss)
        assert path == root / f"step_{step:06d}" and path.is_dir()

    latest = manager.resolve("auto")
    assert latest == root / "step_000003", latest
    shared, mine = manager.load(latest)
    assert shared["step"] == 3 and torch.equal(shared["model"]["w"], torch.arange(4.0) * 3)
    assert mine["rank"] == rank and torch.equal(mine["x"], torch.full((3,), 10.0 * rank + 3))
    torch.rand(7)
    restore_rng_state(mine["rng"])
    assert torch.equal(torch.rand(4), expected_draw)

    # A failure on one rank reaches every rank: nobody hangs, nothing half-written stays behind.
    bad = {"rank": rank, "oops": object()} if rank == 1 else {"rank": rank}
    try:
        manager.save(4, {"step": 4}, bad)
    except CheckpointError as err:
        failure = str(err)
    else:
        raise AssertionError("a failed save on rank 1 must raise on every rank")
    assert "rank 1" in failure, failure
    dist.barrier()
    assert manager.latest() == latest
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []

    try:  # a manager whose ranks disagree with torch.distributed fails before any collective
        CheckpointManager(root, rank=1 - rank, world_size=2).save(5, {}, {})
    except CheckpointError as err:
        assert "leave rank/world_size unset" in str(err)
    else:
        raise AssertionError("a rank mismatch must be refused")

    assert any_rank_requested(rank == 1) is True
    assert any_rank_requested(False) is False

    report = {
        "rank": rank,
        "steps": [info.step for info in manager.list()],
        "best": manager.best().name,
        "failure": failure,
    }
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def run_rank(rank: int, world_size: int, port: int, root: Path, report_dir: Path) -> None:
    """Entry point of a forked rank: the torchrun-style environment, then `main`."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    main(root, report_dir)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
