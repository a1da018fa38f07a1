"""Worker code for test_distributed.py (importable by spawned processes)."""

import os

import torch
import torch.distributed as dist

from sb_muon import MuonAdamW

SHAPES = [(32, 24), (24, 32), (16, 16, 3), (40, 8), (32, 24), (8, 8)]


class CountingMuon(MuonAdamW):
    calls = 0

    def _orthogonalize(self, group, direction, generator=None):
        CountingMuon.calls += 1
        return super()._orthogonalize(group, direction, generator)


def _make_params():
    gen = torch.Generator().manual_seed(0)
    mats = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    vec = torch.nn.Parameter(torch.randn(7, generator=gen))
    return mats, vec


def _run(steps: int) -> tuple[list[torch.Tensor], int]:
    mats, vec = _make_params()
    opt = CountingMuon([{"params": mats, "use_muon": True, "lr": 0.05, "weight_decay": 0.1},
                        {"params": [vec], "use_muon": False, "lr": 0.01}])
    CountingMuon.calls = 0
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        for p in [*mats, vec]:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in [*mats, vec]], CountingMuon.calls


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params, calls = _run(3)
        torch.save({"params": params, "calls": calls}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
