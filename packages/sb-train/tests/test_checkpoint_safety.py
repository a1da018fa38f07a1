"""Checkpoints are data, never code, and never rot silently: a crafted pickle does not run in resume nor in
sampling, a byte flipped in any checkpoint file (size unchanged) is refused naming the file, and a version-1
checkpoint (no checksums) still loads, with a warning."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import only_run_dir, smoke_overrides

from sb_train.checkpoint import CheckpointManager
from sb_train.checkpoint.digest import file_sha256, meta_digest
from sb_train.cli import main
from sb_train.sample import load_model


@pytest.fixture(scope="module")
def trained(smoke_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 4-step smoke run with its final checkpoint (step 3); returns (run folder, the CLI's --set args)."""
    out = tmp_path_factory.mktemp("safety-runs")
    sets = [a for o in smoke_overrides(smoke_data, out, "schedule.num_iterations=4", "run.val_loss_every=0",
                                        "run.checkpoint_every=0") for a in ("--set", o)]
    assert main(["--preset", "smoke", *sets]) == 0
    return only_run_dir(out), sets


def _copy_run(trained_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    (ckpt,) = [info.path for info in CheckpointManager(run_dir / "checkpoints").list()]
    return run_dir, ckpt


def _resume(sets: list[str], ckpt: Path) -> int:
    return main(["--preset", "smoke", *sets, "--resume", str(ckpt)])


def _sample(target: Path) -> int:
    return main(["sample", str(target), "--prompt", "def ", "--max-new-tokens", "4"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but the lock (which records its latest holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


class MakesMarker:
    """Unpickling this runs ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickle(ckpt: Path, marker: Path) -> None:
    """Replace shared.pt by a torch.save'd object whose unpickling creates ``marker``, and rewrite meta.json
    with matching checksums (an attacker can do that too), so only weights_only stands in the way."""
    torch.save({"model": MakesMarker(marker), "config": {}}, ckpt / "shared.pt")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"]["shared.pt"] = {"size": (ckpt / "shared.pt").stat().st_size,
                                  "sha256": file_sha256(ckpt / "shared.pt")}
    meta["meta_sha256"] = meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_the_crafted_pickle_does_run_code_when_loaded_unsafely(tmp_path):
    """The control: the planted file really executes code under a plain unpickle."""
    marker = tmp_path / "pwned"
    torch.save({"model": MakesMarker(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_crafted_pickle_does_not_run_on_resume(trained, tmp_path, capsys):
    trained_run, sets = trained
    run_dir, ckpt = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "pwned-resume"
    _plant_pickle(ckpt, marker)
    before = _snapshot(run_dir)
    assert _resume(sets, ckpt) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "refusing to load" in err and "shared.pt" in err and "Traceback" not in err
    assert _snapshot(run_dir) == before  # nothing was written into the run


def test_crafted_pickle_does_not_run_in_sampling(trained, tmp_path, capsys):
    run_dir, ckpt = _copy_run(trained[0], tmp_path)
    marker = tmp_path / "pwned-sample"
    _plant_pickle(ckpt, marker)
    assert _sample(run_dir) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "refusing to load" in err and "shared.pt" in err and "Traceback" not in err


def _flip(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_meta(path: Path) -> None:
    """Change one hex digit of a recorded digest: valid JSON of the same size, a different value."""
    text = path.read_text()
    meta = json.loads(text)
    digest = meta["files"]["rank_00000.pt"]["sha256"]
    changed = ("1" if digest[0] != "1" else "2") + digest[1:]
    new = text.replace(digest, changed)
    assert len(new) == len(text) and new != text
    path.write_text(new)


FLIPS = [(name, where) for name in ("shared.pt", "rank_00000.pt") for where in ("first", "middle", "last")]
FLIPS += [("meta.json", "digest"), ("meta.json", "middle")]


@pytest.mark.parametrize(("name", "where"), FLIPS)
def test_a_flipped_byte_in_any_checkpoint_file_is_refused_by_resume_and_sample(trained, tmp_path, capsys,
                                                                                 name, where):
    trained_run, sets = trained
    run_dir, ckpt = _copy_run(trained_run, tmp_path)
    size = (ckpt / name).stat().st_size
    _flip_meta(ckpt / name) if where == "digest" else _flip(ckpt / name, where)
    assert (ckpt / name).stat().st_size == size
    before = _snapshot(run_dir)
    assert _resume(sets, ckpt) == 2
    resume_err = capsys.readouterr().err
    assert _sample(ckpt) == 2
    sample_err = capsys.readouterr().err
    for err in (resume_err, sample_err):
        assert str(ckpt / name) in err or (name == "meta.json" and str(ckpt) in err and "meta" in err), err
        assert "corrupt" in err and "Traceback" not in err
    assert _snapshot(run_dir) == before


def test_version_1_checkpoint_without_checksums_loads_with_a_warning(trained, tmp_path):
    _, ckpt = _copy_run(trained[0], tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    old = {k: v for k, v in meta.items() if k != "meta_sha256"}
    old.update(version=1, files={n: e["size"] for n, e in meta["files"].items()})
    (ckpt / "meta.json").write_text(json.dumps(old))
    with pytest.warns(RuntimeWarning, match="records no checksums"):
        model, _ = load_model(ckpt)
    assert model.config.vocab_size == 256


def test_what_sb_train_writes_loads_with_weights_only(trained, tmp_path):
    """The refusals above are not a loader that refuses everything: sb-train's own files load."""
    (ckpt,) = [info.path for info in CheckpointManager(trained[0] / "checkpoints").list()]
    for name in ("shared.pt", "rank_00000.pt"):
        assert isinstance(torch.load(ckpt / name, weights_only=True), dict)
    torch.save({"x": MakesMarker(tmp_path / "never")}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not (tmp_path / "never").exists()
