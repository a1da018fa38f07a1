"""Muon across 2 processes (gloo, CPU): the work is split, the results are identical."""

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from muon_dist_worker import SHAPES, _run, _worker

from sb_muon import Muon
from sb_muon.distributed import assign_owners


def test_assign_owners_balances_and_is_deterministic():
    owners = assign_owners([10.0, 1.0, 1.0, 9.0, 1.0], 2)
    assert owners == assign_owners([10.0, 1.0, 1.0, 9.0, 1.0], 2)
    loads = [sum(c for c, o in zip([10, 1, 1, 9, 1], owners, strict=True) if o == r) for r in range(2)]
    assert max(loads) == 11
    assert assign_owners([1.0] * 3, 8) == [0, 1, 2]


@pytest.mark.timeout(180)
def test_two_ranks_split_work_and_match_single_process():
    torch.set_num_threads(1)
    expected, single_calls = _run(3)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "store")
        mp.start_processes(_worker, args=(2, init_file, tmp), nprocs=2, join=True, start_method="spawn")
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    assert single_calls == 3 * len(SHAPES)
    # each rank orthogonalized only its share, together exactly all of them
    assert results[0]["calls"] + results[1]["calls"] == single_calls
    assert 0 < results[0]["calls"] < single_calls
    for a, b, ref in zip(results[0]["params"], results[1]["params"], expected, strict=True):
        assert torch.equal(a, b), "ranks diverged"
        assert torch.equal(a, ref), "distributed result differs from the single-process one"


def test_distributed_false_does_all_the_work_locally():
    opt = Muon([torch.nn.Parameter(torch.randn(4, 4))], distributed=False)
    assert opt.distributed is False
