"""The smoke preset on 2 processes (gloo, CPU, torchrun's environment variables): it trains, only rank 0
writes logs, and a run killed at a random step and resumed repeats the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import random

from train_helpers import launch, only_run_dir, read_losses, smoke_overrides

from sb_train.checkpoint import CheckpointManager


def _args(smoke_data, out, *extra):
    overrides = smoke_overrides(smoke_data, out, "run.run_name=dist", *extra)
    return ["--preset", "smoke", *[a for o in overrides for a in ("--set", o)]]


def test_two_processes_kill_and_resume_is_bit_exact(smoke_data, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "crash"
    ref = launch(_args(smoke_data, ref_out), tmp_path, world_size=2)
    assert [r.returncode for r in ref] == [0, 0], ref[0].stdout + ref[1].stdout
    ref_dir = only_run_dir(ref_out)
    header = json.loads((ref_dir / "run.json").read_text())
    assert header["world_size"] == 2 and header["tokens_per_step"] == 2 * 256
    ref_losses = read_losses(ref_dir)
    assert sorted(ref_losses) == list(range(13))
    assert ref_losses[12][1] < ref_losses[0][1] - 1.0
    assert "step:12/12 val_loss" in ref[0].stdout and "val_loss" not in ref[1].stdout  # rank 0 prints
    info = CheckpointManager(ref_dir / "checkpoints", world_size=2, rank=0).list()[-1]
    assert info.world_size == 2 and set(info.files) == {"shared.pt", "rank_00000.pt", "rank_00001.pt"}

    kill_at = random.Random().randint(4, 10)
    crashed = launch(_args(smoke_data, out), tmp_path, world_size=2,
                     kill_after_step=kill_at)
    assert [r.returncode for r in crashed] == [17, 17], crashed[0].stdout
    resumed = launch([*_args(smoke_data, out), "--resume", "auto"], tmp_path, world_size=2)
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stdout + resumed[1].stdout
    assert read_losses(only_run_dir(out)) == ref_losses, f"killed at step {kill_at}"
