"""Beyond one machine through torchrun itself: 2 "nodes" x 1 process meeting by c10d rendezvous on loopback
train exactly like 1 node x 2 processes, and with ``--max-restarts 1`` a rank killed mid-run is restarted by
torchrun and the run goes on from its newest checkpoint (``--resume auto``) to the same losses."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from train_helpers import free_port, launch, only_run_dir, read_losses, smoke_overrides

ELASTIC_WORKER = Path(__file__).with_name("elastic_worker.py")
RUN_NAME = "multi"
STEPS = list(range(13))  # the smoke preset: steps 0..12, checkpoints every 4 steps


def _args(smoke_data: Path, out: Path) -> list[str]:
    overrides = smoke_overrides(smoke_data, out, f"run.run_name={RUN_NAME}", 'run.device="cpu"')
    return ["--preset", "smoke", *[a for o in overrides for a in ("--set", o)]]


def _torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher]


def _run_all(cmds: list[list[str]], cwd: Path, timeout: float = 400,
             **env_vars: str) -> list[subprocess.CompletedProcess]:
    """Start every command at once (the launchers must meet), wait for all; kill all on a timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, ""))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _show(results: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- launcher {i} (exit {r.returncode}) ---\n{r.stdout[-4000:]}"
                     for i, r in enumerate(results))


@pytest.fixture(scope="module")
def reference_losses(smoke_data, tmp_path_factory) -> dict[int, tuple[float | None, float | None]]:
    """The smoke run on 1 node x 2 processes (torchrun's environment, gloo), uninterrupted."""
    tmp = tmp_path_factory.mktemp("multinode-ref")
    ref = launch(_args(smoke_data, tmp / "runs"), tmp, world_size=2)
    assert [r.returncode for r in ref] == [0, 0], ref[0].stdout + ref[1].stdout
    losses = read_losses(only_run_dir(tmp / "runs"))
    assert sorted(losses) == STEPS and losses[12][1] < losses[0][1] - 1.0
    return losses


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_match_one_node(smoke_data, reference_losses, tmp_path):
    """Two torchrun launchers (``--nnodes=2 --nproc_per_node=1``, c10d rendezvous on 127.0.0.1) sharing one
    output folder and run name give the losses of 1 node x 2 processes, bit for bit. About 30 s on 2 CPU
    cores, plus about 35 s for the module's 1 x 2 reference run (shared with the next test)."""
    out = tmp_path / "runs"
    rdzv = [
        "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id=sb-{uuid.uuid4().hex[:12]}",
        "--local-addr=127.0.0.1", "--max-restarts=0",
    ]
    cmd = _torchrun(*rdzv, "-m", "sb_train", *_args(smoke_data, out))
    results = _run_all([cmd, cmd], tmp_path)
    assert [r.returncode for r in results] == [0, 0], _show(results)
    run_dir = only_run_dir(out)
    assert run_dir.name == RUN_NAME
    assert read_losses(run_dir) == reference_losses
    # exactly one of the two nodes held global rank 0 and printed the final validation
    assert sum("step:12/12 val_loss" in r.stdout for r in results) == 1, _show(results)


@pytest.mark.slow
def test_rank_killed_mid_run_is_restarted_by_torchrun_and_resumes(smoke_data, reference_losses, tmp_path):
    """``torchrun --nproc_per_node=2 --max-restarts=1 ... --resume auto``: rank 1 dies (``os._exit``) after
    step 6 on the first attempt; torchrun stops rank 0, restarts both, and the run resumes from the checkpoint
    written at step 4 (the state after step 3), redoes steps 4..6 and ends with the uninterrupted run's losses
    (rank 0's run-folder lock died with it). About 50 s on 2 CPU cores."""
    out = tmp_path / "runs"
    launcher = ["--nnodes=1", "--nproc_per_node=2", "--max-restarts=1", "--monitor-interval=0.5",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                f"--rdzv-id=sb-{uuid.uuid4().hex[:12]}", "--local-addr=127.0.0.1"]
    cmd = _torchrun(*launcher, str(ELASTIC_WORKER), "1", "6", *_args(smoke_data, out), "--resume", "auto")
    # torchrun's agent keeps its rendezvous TCPStore across restarts and the restarted ranks then read the
    # dead ranks' gloo addresses from it (connectFullMesh: connection refused, 3 restarts in 4 here);
    # this opt-out gives every attempt a fresh store (README, Multi-node)
    (result,) = _run_all([cmd], tmp_path, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    assert result.returncode == 0, _show([result])
    assert "rank 1 dies after step 6" in result.stdout, _show([result])
    assert "resumed from" in result.stdout and "step_000003 (step 3," in result.stdout, _show([result])
    run_dir = only_run_dir(out)
    assert read_losses(run_dir) == reference_losses, _show([result])
