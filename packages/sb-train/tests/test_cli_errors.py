"""Every sb-train bad input is one line on stderr and exit code 1 or 2 (the traceback only with --debug or
SB_DEBUG=1); SIGTERM stops a run with exit code 143 and a checkpoint that --resume continues; a half-built
auto-prepared corpus is rebuilt, or explained when it is not sb-train's to replace."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import only_run_dir, smoke_overrides

from sb_train.checkpoint import CheckpointError, CheckpointManager
from sb_train.cli import main
from sb_train.cli_errors import describe

SHORT = ("schedule.num_iterations=4", "run.val_loss_every=0", "run.checkpoint_every=0")


def _sets(smoke_data: Path, out: Path, *extra: str) -> list[str]:
    return [a for o in smoke_overrides(smoke_data, out, *SHORT, *extra) for a in ("--set", o)]


def _fails(capsys, args: list[str], code: int = 2) -> str:
    """Run the CLI; assert the exit code and one line on stderr without a traceback; return the line."""
    got = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sb-train")]
    assert got == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("setting", "expected"), [
    ("model.head_dim=0", "must be a multiple of head_dim (0)"),
    ('run.device="tpu"', "run.device='tpu' is not a device"),
    ('run.device="cuda:zero"', "is not a device"),
    ("model.max_window_tokens=0", "max_window_tokens=0 must be a positive multiple of block_size"),
    ("model.bank.num_experts=3", "turns on 4 experts at step 6 but model.bank.num_experts is 3"),
    ("schedule.expert_activation_schedule=[[0, 1], [2, 9]]", "turns on 9 experts"),
])  # fmt: skip
def test_bad_settings_are_one_line_and_exit_2(smoke_data, tmp_path, capsys, setting, expected):
    line = _fails(capsys, ["--preset", "smoke", *_sets(smoke_data, tmp_path, setting)])
    assert expected in line
    assert not any(tmp_path.iterdir()) or not list(tmp_path.glob("*/run.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu(smoke_data, tmp_path, capsys):
    line = _fails(capsys, ["--preset", "smoke", *_sets(smoke_data, tmp_path, 'run.device="cuda"')])
    assert "no usable CUDA GPU" in line and "run.device=cpu" in line


def test_config_file_not_utf8_or_a_folder(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[run]\nrun_name = "caf\xe9"\n'.encode("latin-1"))
    assert "not UTF-8 text (byte 0xe9" in _fails(capsys, ["--preset", "smoke", "--config", str(bad)])
    assert "is a folder" in _fails(capsys, ["--preset", "smoke", "--config", str(tmp_path)])
    assert "no such file" in _fails(capsys, ["--preset", "smoke", "--config", str(tmp_path / "nope.toml")])


@pytest.fixture(scope="module")
def finished_run(smoke_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-runs")
    assert main(["--preset", "smoke", *_sets(smoke_data, out)]) == 0
    return only_run_dir(out)


def test_explicit_resume_of_an_incomplete_checkpoint(finished_run, smoke_data, tmp_path, capsys):
    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir)
    (ckpt,) = [i.path for i in CheckpointManager(run_dir / "checkpoints").list()]
    (ckpt / "meta.json").unlink()  # what a save killed before its end leaves
    line = _fails(capsys, ["--preset", "smoke", *_sets(smoke_data, tmp_path), "--resume", str(ckpt)])
    assert "is not a complete checkpoint: it has no meta.json" in line and "--resume auto" in line


def test_a_text_file_given_as_a_checkpoint(smoke_data, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    for args in (["--preset", "smoke", *_sets(smoke_data, tmp_path), "--resume", str(notes)],
                 ["sample", str(notes)]):
        line = _fails(capsys, args)
        assert f"{notes} is a file, not a checkpoint" in line


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    args = ["--preset", "smoke", "--set", 'run.device="tpu"']
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("SB_DEBUG", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("sb-train: run.device='tpu'")


def test_file_system_errors_are_one_line_and_exit_1(smoke_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = _fails(capsys, ["--preset", "smoke", *_sets(smoke_data, blocker / "runs")], code=1)
    assert str(blocker) in line and "is a file, not a folder" in line


@pytest.mark.parametrize(("err", "words"), [
    (errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
    (errno.ENOTDIR, "not a folder"),
])  # fmt: skip
def test_os_errors_map_to_exit_1_with_the_file_named(err, words):
    code, line = describe(OSError(err, os.strerror(err), "/runs/x/scalars.csv"))
    assert code == 1 and line.startswith("/runs/x/scalars.csv: ") and words in line
    assert describe(FileNotFoundError(errno.ENOENT, "gone", "/data/x.bin"))[0] == 2
    assert describe(RuntimeError("a bug")) is None  # not an input error: the traceback stays


def test_a_checkpoint_save_on_a_full_disk_is_exit_1(tmp_path, monkeypatch):
    import sb_train.checkpoint.store as store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "shared.pt"))

    monkeypatch.setattr(store.torch, "save", full)
    with pytest.raises(CheckpointError) as caught:
        CheckpointManager(tmp_path).save(1, {"x": torch.zeros(2)}, {})
    code, line = describe(caught.value)
    assert code == 1 and "No space left on device" in line
    assert not any(tmp_path.iterdir())  # the half-written save is gone


def _corpus_sets(data: Path, prefix: str, tmp_path: Path) -> list[str]:
    return ["--set", f'data.train_files="{data}/{prefix}_train_*.bin"',
            "--set", f'data.val_files="{data}/{prefix}_val_*.bin"',
            "--set", 'data.auto_prepare="python-docs"', "--set", f'run.out_dir="{tmp_path / "runs"}"']


def test_half_built_corpus_is_rebuilt(tmp_path, capsys):
    data = tmp_path / "pydata"
    data.mkdir()
    from sb_train.builtin_corpus import write_python_docs_shards

    write_python_docs_shards(data, "pd", max_bytes=200_000)
    (data / "pd_val_000000.bin").unlink()
    (data / "pd_summary.json").unlink()  # as a build cut short before its end leaves it
    sets = [*_corpus_sets(data, "pd", tmp_path), "--set", "data.auto_prepare_max_bytes=200000",
            "--set", "run.threads=1", *[a for o in SHORT for a in ("--set", o)]]
    assert main(["--preset", "smoke", *sets]) == 0
    assert "rebuilding both" in capsys.readouterr().err
    assert (data / "pd_val_000000.bin").exists()


def test_half_built_corpus_of_other_inputs_is_explained_not_replaced(tmp_path, capsys):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "own_train_000000.bin").write_bytes(b"precious")
    (data / "own_summary.json").write_text(json.dumps({"inputs": ["/corpus/my-text.jsonl"]}))
    line = _fails(capsys, ["--preset", "smoke", *_corpus_sets(data, "own", tmp_path)])
    assert "data.auto_prepare did not write" in line and "--overwrite" not in line
    assert (data / "own_train_000000.bin").read_bytes() == b"precious"


def test_sigterm_exits_143_with_a_resumable_checkpoint(smoke_data, tmp_path):
    long_run = ("schedule.num_iterations=5000", "run.val_loss_every=0", "run.stop_check_every=1")
    sets = [a for o in smoke_overrides(smoke_data, tmp_path, *long_run) for a in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "sb_train", "--preset", "smoke", *sets], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until a few steps are logged
            scalars = list(tmp_path.glob("*/scalars.csv"))
            if scalars and scalars[0].read_text().count("\n") >= 4:
                break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    run_dir = only_run_dir(tmp_path)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "aborted" and "SIGTERM" in status["abort_reason"]
    latest = CheckpointManager(run_dir / "checkpoints").list()[-1]
    stop = latest.step + 3  # a free-to-change setting: resume and train three more steps
    code = main(["--preset", "smoke", *sets, "--set", f"run.early_stop_step={stop}", "--resume", "auto"])
    assert code == 0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
