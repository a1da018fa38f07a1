"""CheckpointManager: atomic layout, round trips, interrupted saves, pruning, --resume, 2 ranks (gloo)."""

import collections
import hashlib
import importlib.util
import json
import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from sb_train.checkpoint import CheckpointError, CheckpointManager, read_checkpoint_info
from sb_train.checkpoint.digest import meta_digest
from sb_train.rng_state import capture_rng_state

WORKER = Path(__file__).with_name("checkpoint_dist_worker.py")


def _state(step: int) -> tuple[dict, dict]:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(step)
        model.bias.fill_(-step)
    shared = {
        "step": step,
        "model": model.state_dict(),
        "optimizers": [{"state": {0: {"momentum": torch.ones(2, 3, dtype=torch.bfloat16) * step}},
                        "param_groups": [{"lr": 0.02, "params": [0], "betas": (0.9, 0.95)}]}],
        "schedule": {"lr_scale": 0.5, "frozen": {"router"}, "history": collections.Counter(a=2)},
        "loader": {"shard": 1, "position": 4096, "files": ["a.bin", "b.bin"]},
        "config": {"name": "tiny", "dims": (2, 3), "wandb": None, "dtype": torch.float32},
        "mantissa": torch.arange(6).to(torch.uint16).view(2, 3),
    }
    per_rank = {"rng": capture_rng_state(), "notes": [1, 2.5, None, "s", b"raw"]}
    return shared, per_rank


def _assert_equal(a, b, where="root"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a.to(torch.float64), b.to(torch.float64)), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_round_trip_of_nested_state_and_meta(tmp_path):
    manager = CheckpointManager(tmp_path)
    shared, per_rank = _state(7)
    path = manager.save(7, shared, per_rank, val_loss=3.25)
    assert path == tmp_path / "step_000007"
    assert _names(tmp_path) == ["step_000007"], "no temporary directory may remain"
    assert _names(path) == ["meta.json", "rank_00000.pt", "shared.pt"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "sb-train-checkpoint" and meta["version"] == 2
    assert (meta["step"], meta["world_size"], meta["val_loss"]) == (7, 1, 3.25)
    # the digests hashed while writing equal the files' sha256 as read back afterwards
    assert meta["files"] == {
        name: {"size": (path / name).stat().st_size,
               "sha256": hashlib.sha256((path / name).read_bytes()).hexdigest()}
        for name in ("rank_00000.pt", "shared.pt")
    }
    assert meta["created_at"]

    loaded_shared, loaded_rank = manager.load(path)
    _assert_equal(loaded_shared, shared)
    _assert_equal(loaded_rank, per_rank)
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(loaded_shared["model"])
    assert torch.all(model.weight == 7)
    info = manager.list()[0]
    assert (info.step, info.world_size, info.val_loss) == (7, 1, 3.25)
    assert info.size_bytes == sum(entry["size"] for entry in meta["files"].values())


def test_values_that_weights_only_cannot_read_are_refused(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match=r"shared\['config'\]\['lr'\] is a numpy.float64"):
        manager.save(1, {"config": {"lr": np.float64(0.1)}}, {})
    with pytest.raises(CheckpointError, match=r"per_rank\['gen'\].*add_safe_globals"):
        manager.save(1, {}, {"gen": torch.Generator()})
    assert manager.latest() is None
    assert _names(tmp_path) == []


def test_failure_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    first = manager.save(1, *_state(1))
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "meta.json":  # shared.pt and rank_00000.pt are already written
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match="disk full"):
        manager.save(2, *_state(2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert manager.latest() == first
    assert _names(tmp_path) == ["step_000001"], "the half-written directory must be removed"
    _assert_equal(manager.load(first)[0]["model"], _state(1)[0]["model"])


class _Killed(BaseException):
    """Stands for the process dying: save() does not catch it, so nothing is cleaned up."""


def test_process_killed_mid_save_leaves_nothing_that_resume_takes(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    first = manager.save(1, *_state(1))
    real_replace = os.replace

    def killed_before_publish(src, dst):
        if Path(dst).name == "step_000002":  # meta.json is written, only the final rename is missing
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_publish)
    with pytest.raises(_Killed):
        manager.save(2, *_state(2))
    monkeypatch.setattr(os, "replace", real_replace)
    leftovers = [name for name in _names(tmp_path) if name.startswith(".step_000002.tmp-")]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0] / "meta.json").exists()
    assert manager.latest() == first
    assert manager.resolve("auto") == first
    with pytest.raises(CheckpointError, match="temporary directory of an interrupted save"):
        manager.resolve(str(tmp_path / leftovers[0]))

    third = manager.save(3, *_state(3))  # the next save clears the stale temporary directory
    assert _names(tmp_path) == ["step_000001", "step_000003"]
    assert manager.latest() == third


def test_incomplete_and_corrupt_directories_are_never_taken(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    good = manager.save(1, *_state(1))
    for step in (5, 6, 7, 8):
        manager.save(step, *_state(step))
    (tmp_path / "step_000005" / "meta.json").unlink()  # interrupted before meta.json
    with open(tmp_path / "step_000006" / "shared.pt", "r+b") as f:  # truncated file
        f.truncate(100)
    (tmp_path / "step_000007" / "rank_00000.pt").unlink()  # missing file
    (tmp_path / "step_000008" / "meta.json").write_text("{not json")  # corrupt meta
    (tmp_path / "step_000009").mkdir()  # empty
    assert [info.step for info in manager.list()] == [1]
    assert manager.latest() == good
    for step, message in [(5, "no meta.json"), (6, "has 100 bytes"), (7, "rank_00000.pt is missing"),
                          (8, "corrupt"), (9, "no meta.json")]:
        with pytest.raises(CheckpointError, match=message):
            manager.resolve(str(tmp_path / f"step_{step:06d}"))
        with pytest.raises(CheckpointError, match=message):
            manager.load(tmp_path / f"step_{step:06d}")


def test_corrupt_file_with_the_right_size_is_a_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, *_state(1))
    size = (path / "shared.pt").stat().st_size
    (path / "shared.pt").write_bytes(b"\0" * size)
    with pytest.raises(CheckpointError, match=r"shared.pt is corrupt: its sha256"):
        manager.load(path)


def test_meta_of_another_format_or_version_is_refused(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(1, *_state(1))
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(CheckpointError, match="version 3"):
        manager.load(path)
    (path / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CheckpointError, match="not an sb-train checkpoint"):
        manager.load(path)
    (path / "meta.json").write_text(json.dumps({**meta, "step": 3}))  # an edited value: meta_sha256 differs
    with pytest.raises(CheckpointError, match="does not match its meta_sha256"):
        manager.load(path)
    edited = {**meta, "step": 3}
    (path / "meta.json").write_text(json.dumps({**edited, "meta_sha256": meta_digest(edited)}))
    with pytest.raises(CheckpointError, match="names step 3"):
        manager.load(path)
    assert manager.latest() is None


def test_world_size_mismatch_is_explained(tmp_path):
    path = CheckpointManager(tmp_path).save(4, *_state(4))
    other = CheckpointManager(tmp_path, rank=1, world_size=2)
    with pytest.raises(CheckpointError, match=r"written by 1 rank\(s\) but this run has 2.*cannot be mapped"):
        other.load(path)
    assert other.load_shared(path)["step"] == 4


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step, val_loss in [(1, 3.0), (2, 2.0), (3, 2.5), (4, None), (5, float("nan")), (6, 2.8)]:
        manager.save(step, *_state(step), val_loss=val_loss)
    assert [info.step for info in manager.list()] == [2, 5, 6]
    assert manager.best() == tmp_path / "step_000002"
    assert manager.list()[1].val_loss is None, "a non-finite loss is stored as null"

    no_best = CheckpointManager(tmp_path, keep_last=1, keep_best=False)
    no_best.save(7, *_state(7), val_loss=1.0)
    assert _names(tmp_path) == ["step_000007"]
    assert no_best.best() == tmp_path / "step_000007"

    keep_all = CheckpointManager(tmp_path / "all", keep_last=None)
    for step in range(4):
        keep_all.save(step, *_state(step))
    assert [info.step for info in keep_all.list()] == [0, 1, 2, 3]
    assert keep_all.best() is None
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_saving_a_step_again_replaces_it(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(3, *_state(3), val_loss=2.0)
    path = manager.save(3, *_state(30), val_loss=1.5)
    assert _names(tmp_path) == ["step_000003"]
    assert manager.load(path)[0]["step"] == 30
    assert manager.list()[0].val_loss == 1.5

    real_replace = os.replace

    def failing_publish(src, dst):
        if Path(dst).name == "step_000003" and ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_publish)
    with pytest.raises(CheckpointError, match="rename failed"):
        manager.save(3, *_state(300))
    monkeypatch.setattr(os, "replace", real_replace)
    assert _names(tmp_path) == ["step_000003"], "the earlier checkpoint of the step is put back"
    assert manager.load(path)[0]["step"] == 30


def test_saving_an_earlier_step_warns_about_later_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(5, *_state(5))
    with pytest.warns(RuntimeWarning, match=r"later checkpoints \(steps \[5\]\)"):
        manager.save(3, *_state(3))
    assert manager.latest() == tmp_path / "step_000005"


def test_resolve_auto_and_explicit_paths(tmp_path):
    manager = CheckpointManager(tmp_path / "run")
    assert manager.resolve("auto") is None, "no checkpoint yet: a fresh start"
    first = manager.save(10, *_state(10))
    assert manager.resolve("auto") == first
    manager.save(20, *_state(20))
    third = manager.save(30, *_state(30))
    assert manager.resolve("auto") == third
    assert manager.resolve(str(first)) == first
    other = CheckpointManager(tmp_path / "other")
    assert other.resolve(str(tmp_path / "run")) == third, "a root resolves to its newest checkpoint"
    with pytest.raises(CheckpointError, match="does not exist"):
        manager.resolve(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        manager.resolve(str(tmp_path / "empty"))
    assert read_checkpoint_info(third).step == 30


def test_world_size_above_one_needs_torch_distributed(tmp_path):
    manager = CheckpointManager(tmp_path, rank=0, world_size=2)
    with pytest.raises(CheckpointError, match=r"needs torch\.distributed"):
        manager.save(1, {}, {})
    with pytest.raises(ValueError, match="outside world_size"):
        CheckpointManager(tmp_path, rank=2, world_size=2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_worker():
    spec = importlib.util.spec_from_file_location("sbtrain_checkpoint_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_two_ranks_save_and_each_loads_its_own_state(tmp_path):
    root, reports = tmp_path / "ckpt", tmp_path / "reports"
    reports.mkdir()
    worker, port = _load_worker(), _free_port()
    context = multiprocessing.get_context("fork")  # no second torch import (seconds on a busy machine)
    procs = [context.Process(target=worker.run_rank, args=(r, 2, port, root, reports)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=150)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0], "a rank failed (traceback in captured stderr)"
    for rank in range(2):
        report = json.loads((reports / f"rank{rank}.json").read_text())
        assert report["steps"] == [2, 3] and report["best"] == "step_000002"
        assert "rank 1" in report["failure"]
    latest = CheckpointManager(root, rank=1, world_size=2).latest()
    assert sorted(read_checkpoint_info(latest).files) == ["rank_00000.pt", "rank_00001.pt", "shared.pt"]
    with pytest.raises(CheckpointError, match="written by 2 rank"):
        CheckpointManager(root).load(latest)
