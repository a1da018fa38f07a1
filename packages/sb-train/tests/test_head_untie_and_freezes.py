"""Schedule knobs that act on the model during a smoke run: the LM head unties at ``untie_lm_head_frac``
(and a checkpoint on either side of the untie resumes bit for bit), the shared-FFN freeze stops every update
but the head's from ``shared_ffn_freeze_frac`` on, and the callback hooks fire in order."""

from __future__ import annotations

import pytest
import torch
from train_helpers import only_run_dir, read_losses, smoke_config

from sb_train.callbacks import TrainerCallback
from sb_train.checkpoint import CheckpointManager
from sb_train.trainer import Trainer

UNTIE = ("model.tie_lm_head=true", "model.untie_lm_head_later=true", "schedule.untie_lm_head_frac=0.5")


class Snapshots(TrainerCallback):
    """Copies of chosen parameters after chosen steps, and the hooks seen."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.taken: dict[int, dict[str, torch.Tensor]] = {}
        self.events: list[str] = []

    def on_train_start(self, trainer):
        self.events.append("start")
        self.taken[-1] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def on_step_end(self, trainer, step):
        self.events.append(f"step {step}")
        if step in self.steps:
            self.taken[step] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def on_train_end(self, trainer, state):
        self.events.append(f"end {state}")


def test_head_unties_at_the_fraction_and_resumes_exactly_on_both_sides(smoke_data, tmp_path):
    snaps = Snapshots({5, 6})
    ref = Trainer(smoke_config(smoke_data, tmp_path / "ref", *UNTIE), callbacks=[snaps]).run()
    assert ref.state == "finished"
    assert snaps.events == ["start", *(f"step {s}" for s in range(12)), "end finished"]
    # tied through step 5 (lm_head untouched); step 6 = int(0.5 * 12) copies the embedding and trains it
    start, before, after = snaps.taken[-1], snaps.taken[5], snaps.taken[6]
    assert torch.equal(before["lm_head"], start["lm_head"])
    assert not torch.equal(after["lm_head"], before["lm_head"])
    ref_dir = only_run_dir(tmp_path / "ref")
    manager = CheckpointManager(ref_dir / "checkpoints")
    states = {info.step: manager.load_shared(info.path)["model"] for info in manager.list()}
    assert sorted(states) == [7, 11] and bool(states[7]["lm_head_copied"])
    assert not torch.equal(states[11]["lm_head"], states[11]["embed.weight"])

    # a checkpoint from before the untie and one from after it both finish as the uninterrupted run
    for stop_after, name in ((3, "early"), (7, "late")):
        out = tmp_path / name
        first = Trainer(smoke_config(smoke_data, out, *UNTIE, f"run.early_stop_step={stop_after + 1}",
                                     "run.checkpoint_every=0")).run()
        assert first.state == "finished" and first.step == stop_after
        saved = CheckpointManager(only_run_dir(out) / "checkpoints").latest()
        assert saved.name == f"step_{stop_after:06d}"
        resumed = Trainer(smoke_config(smoke_data, out, *UNTIE), resume=str(saved)).run()
        assert resumed.state == "finished"
        got, want = read_losses(only_run_dir(out)), read_losses(ref_dir)
        resumed_steps = range(stop_after + 1, 12)
        assert [got[s][0] for s in resumed_steps] == [want[s][0] for s in resumed_steps], name
        assert got[12] == want[12], name


def test_untie_fraction_needs_a_tied_head_ready_to_untie(smoke_data, tmp_path):
    with pytest.raises(ValueError, match=r"model\.untie_lm_head_later=true"):
        Trainer(smoke_config(smoke_data, tmp_path, "schedule.untie_lm_head_frac=0.5"))


def test_shared_ffn_freeze_keeps_everything_but_the_head_fixed(smoke_data, tmp_path):
    snaps = Snapshots({7, 11})
    cfg = smoke_config(smoke_data, tmp_path, "schedule.shared_ffn_freeze_frac=0.6")  # frozen from step 8
    assert Trainer(cfg, callbacks=[snaps]).run().state == "finished"
    first, last = snaps.taken[7], snaps.taken[11]
    moved = {name for name in first if not torch.equal(first[name], last[name])}
    assert moved == {"lm_head"}
