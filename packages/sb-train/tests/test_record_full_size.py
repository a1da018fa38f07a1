"""The record preset at its real size on CPU: 2 gloo ranks under torchrun, 2 steps, a checkpoint, a resume.

What is the record's: the model (282,395,148 parameters), its optimizer groups and hyper-parameters, its
schedules (1,750 steps; steps 0 and 1 of them are trained), the distributed gradient path (GradReducer over
gloo) and the checkpoint at full size. What is reduced, for time and memory only: the tokens per rank per
step (TOKENS_PER_RANK = 512 instead of the record's 12,288 on each of 8 GPUs), the validation (256-token
sequences, one per rank at step 2, no step-0 validation), the compile warm-up (run.warmup_steps=0; compile is
off on CPU anyway) and the data (synthetic GPT-2-range token ids written by the test).

Run A trains steps 0 and 1 (checkpoints after each); run B resumes A's step-0 checkpoint and trains step 1
again: its step-1 training loss and step-2 validation loss equal run A's bit for bit.

Measured on 2 CPU cores (x86_64 Xeon with AVX512-BF16, torch 2.15, a machine shared with other jobs), two
runs: 6.7 and 8.3 minutes of wall time (two launches; step 0 takes ~2 min, step 1 ~1 min), peak resident
memory 6.7 GiB per rank and 14.6 GiB for the whole process tree (pytest, torchrun, both ranks); each
checkpoint is 2.8 GB on disk, and the test deletes its runs folder when it ends.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import only_run_dir, read_losses

from sb_data.format import write_shard
from sb_model import GPT
from sb_train.checkpoint import list_checkpoints
from sb_train.config_loading import load_config
from sb_train.optimizer import build_optimizer

RECORD_PARAMS = 282_395_148
TOKENS_PER_RANK = 512
VAL_SEQ_LEN = 256
VOCAB, EOT = 50257, 50256  # GPT-2's ids (the model pads its embedding to 50,304 rows)
RUN_NAME = "record-full"
TIMEOUT_S = 1800


def _write_shards(folder: Path) -> tuple[str, str]:
    """Random documents (EOT-led, 50-800 tokens) of GPT-2-range ids: one train and one val shard."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16 * TOKENS_PER_RANK), ("val", 4 * VAL_SEQ_LEN)):
        parts, total = [], 0
        while total < n + 1:
            length = int(rng.integers(50, 800))
            parts += [np.array([EOT]), rng.integers(0, EOT, length - 1)]
            total += length
        write_shard(folder / f"synth_{split}_000000.bin", np.concatenate(parts)[: n + 1].astype(np.uint16),
                    vocab_size=VOCAB, eot_id=EOT)
    return str(folder / "synth_train_*.bin"), str(folder / "synth_val_*.bin")


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=0", "-m", "sb_train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT_S)


@pytest.mark.slow
def test_record_at_full_size_trains_checkpoints_and_resumes_on_two_gloo_ranks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train, val = _write_shards(data)
    out = tmp_path / "runs"
    settings = [
        f'data.train_files="{train}"', f'data.val_files="{val}"', f"data.tokens_per_rank={TOKENS_PER_RANK}",
        f"data.val_seq_len={VAL_SEQ_LEN}", f"data.val_tokens={2 * VAL_SEQ_LEN}",
        f"data.val_tokens_intermediate={2 * VAL_SEQ_LEN}", f"data.val_tokens_final={2 * VAL_SEQ_LEN}",
        'run.device="cpu"', "run.threads=1", "run.warmup_steps=0", "run.validate_at_start=false",
        "run.early_stop_step=2", "run.checkpoint_every=1", "run.keep_last=2", "run.keep_best=false",
        f'run.out_dir="{out}"', f'run.run_name="{RUN_NAME}"',
    ]
    args = ["--preset", "record", *[a for s in settings for a in ("--set", s)]]
    try:
        _train_checkpoint_and_resume(args, tmp_path, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # 2 checkpoints of 2.8 GB each


def _train_checkpoint_and_resume(args: list[str], tmp_path: Path, out: Path) -> None:
    first = _torchrun(args, tmp_path)
    assert first.returncode == 0, first.stdout[-6000:]
    run_dir = only_run_dir(out)
    assert f"{RECORD_PARAMS:,}" in first.stdout, first.stdout[-3000:]  # rank 0's parameter-count table
    assert "[sb-train] device plan: cpu x2" in first.stdout
    losses = read_losses(run_dir)
    assert sorted(losses) == [0, 1, 2]
    for step in (0, 1):
        loss = losses[step][0]
        assert loss is not None and np.isfinite(loss) and 9 < loss < 12  # ~ln(50257) = 10.8 at the start
    assert losses[2][1] is not None and np.isfinite(losses[2][1])
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [0, 1]

    header = json.loads((run_dir / "run.json").read_text())
    record = load_config("record")
    meta_model = GPT(record.model, device="meta")
    assert sum(p.numel() for p in meta_model.parameters()) == RECORD_PARAMS
    groups = [g["name"] for g in build_optimizer(meta_model, record.optim).param_groups]
    assert header["world_size"] == 2 and header["total_steps"] == 1750
    with open(run_dir / "scalars.csv", encoding="utf-8") as f:
        columns = next(csv.reader(f))
    assert [c.removeprefix("lr_") for c in columns if c.startswith("lr_")] == groups  # the record's groups
    assert header["device_plan"]["collective_backend"] == "gloo"
    assert header["tokens_per_step"] == 2 * TOKENS_PER_RANK

    step0 = run_dir / "checkpoints" / "step_000000"
    second = _torchrun([*args, "--resume", str(step0)], tmp_path)
    assert second.returncode == 0, second.stdout[-6000:]
    resumed = read_losses(run_dir)
    assert resumed[1] == losses[1] and resumed[2] == losses[2]  # bit for bit
    header = json.loads((run_dir / "run.json").read_text())
    assert header["resumed_from"]["step"] == 0 and header["segments"][-1]["start_step"] == 1
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [0, 1]
