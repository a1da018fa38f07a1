"""Runs are not mixed or overwritten: one trainer per run folder (flock, the holder named), a stale lock of
a dead process does not block, run names are plain folder names, a reused run name points to --resume, and a
resume with changed settings needs --allow-config-change (run.json then keeps every configuration)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import smoke_config, smoke_overrides

from sb_train.cli import main
from sb_train.errors import RunLockedError
from sb_train.run_lock import RunLock
from sb_train.trainer import Trainer

SHORT = ("schedule.num_iterations=4", "run.val_loss_every=0", "run.checkpoint_every=0")


def _sets(smoke_data: Path, out: Path, *extra: str) -> list[str]:
    return [a for o in smoke_overrides(smoke_data, out, *SHORT, *extra) for a in ("--set", o)]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_trainer_on_the_same_run_folder_refuses_and_the_first_is_intact(smoke_data, tmp_path):
    cfg = smoke_config(smoke_data, tmp_path, *SHORT, 'run.run_name="shared"')
    first = Trainer(cfg)
    run_dir = tmp_path / "shared"
    before = _files(run_dir)
    assert ".lock" in before and json.loads(before[".lock"])["pid"] == os.getpid()
    for resume in (None, "auto"):  # a new run with the same name, and --resume auto of it
        with pytest.raises(RunLockedError) as caught:
            Trainer(cfg, resume=resume)
        message = str(caught.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and str(run_dir) in message
        assert _files(run_dir) == before  # the refused trainer wrote nothing
    result = first.run()
    assert result.state == "finished"
    header = json.loads((run_dir / "run.json").read_text())
    assert header["run_id"] == "shared" and len(header["segments"]) == 1
    # the lock is gone with the run: the folder can be resumed now
    assert Trainer(cfg, resume="auto").run().state == "finished"


HOLDER = """
import sys, time
from sb_train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_held_by_another_process_is_named_and_a_dead_holder_does_not_block(smoke_data, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["--preset", "smoke", *_sets(smoke_data, tmp_path, 'run.run_name="busy"')])
        err = capsys.readouterr().err
        assert code == 2
        assert f"in use by another trainer (pid {holder.pid} on host {socket.gethostname()}" in err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()  # SIGKILL: no cleanup, the .lock file stays
        holder.wait()
    assert (run_dir / ".lock").exists()
    with RunLock(run_dir):  # the kernel dropped the dead process's lock
        pass
    assert main(["--preset", "smoke", *_sets(smoke_data, tmp_path, 'run.run_name="busy"')]) == 0


def test_same_run_name_twice_points_to_resume(smoke_data, tmp_path, capsys):
    sets = _sets(smoke_data, tmp_path, 'run.run_name="twice"')
    assert main(["--preset", "smoke", *sets]) == 0
    run_dir = tmp_path / "twice"
    before = _files(run_dir)
    capsys.readouterr()
    assert main(["--preset", "smoke", *sets]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {run_dir}" in err and "resumed_from" not in err
    assert {k: v for k, v in _files(run_dir).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", ".hidden", "with space"])
def test_bad_run_names_are_refused_before_anything_is_created(smoke_data, tmp_path, capsys, name):
    out = tmp_path / "out"
    code = main(["--preset", "smoke", *_sets(smoke_data, out, f"run.run_name={json.dumps(name)}")])
    assert code == 2
    assert "run.run_name=" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "escape").exists()


def test_resume_with_changed_settings_needs_allow_config_change(smoke_data, tmp_path, capsys):
    sets = _sets(smoke_data, tmp_path, 'run.run_name="grow"')
    assert main(["--preset", "smoke", *sets]) == 0
    run_dir = tmp_path / "grow"
    resume = ["--resume", str(run_dir)]
    changed = [*sets, "--set", "schedule.num_iterations=6"]
    capsys.readouterr()
    scalars = (run_dir / "scalars.csv").read_bytes()
    assert main(["--preset", "smoke", *changed, *resume]) == 2
    err = capsys.readouterr().err
    assert "schedule.num_iterations (4 -> 6)" in err and "--allow-config-change" in err
    assert (run_dir / "scalars.csv").read_bytes() == scalars
    # a model change is refused even with the flag
    assert main(["--preset", "smoke", *sets, "--set", "model.bank.ffn_hidden=32", *resume,
                 "--allow-config-change"]) == 2
    assert "another model configuration" in capsys.readouterr().err
    # settings that do not change the numbers may change freely
    assert main(["--preset", "smoke", *sets, "--set", "run.print_every=2", *resume]) == 0
    assert main(["--preset", "smoke", *changed, *resume, "--allow-config-change"]) == 0
    header = json.loads((run_dir / "run.json").read_text())
    segments = header["segments"]
    assert [s["start_step"] for s in segments] == [0, 4, 4]
    assert segments[0]["config"]["schedule"]["num_iterations"] == 4
    assert segments[-1]["config"]["schedule"]["num_iterations"] == 6
    assert segments[-1]["changed"] == ["run.print_every", "schedule.num_iterations"]
    assert header["config"] == segments[-1]["config"] and header["total_steps"] == 6


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--preset", "record", "--set", "run.device=cpu", "--out", str(tmp_path / "runs")]) == 2
    assert "no shards match" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

