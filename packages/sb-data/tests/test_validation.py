import numpy as np
import pytest
import torch
from sbdata_helpers import write_document_shards, write_stream_shards

from sb_data.validation import ValidationLoader


@pytest.fixture(scope="module")
def val_files(tmp_path_factory):
    return write_stream_shards(tmp_path_factory.mktemp("val"), [30, 30, 41])


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_first_n_tokens_split_across_ranks(val_files):
    world, T, n = 3, 4, 36
    per_rank = [ValidationLoader(val_files, n, T, rank=r, world_size=world) for r in range(world)]
    assert all(len(v) == 3 for v in per_rank)
    everything = []
    for step in range(3):
        for r in range(world):
            x, y = batches(per_rank[r])[step]
            start = step * world * T + r * T
            np.testing.assert_array_equal(x.numpy(), np.arange(start, start + T))
            np.testing.assert_array_equal(y.numpy(), np.arange(start + 1, start + T + 1))
            everything.extend(x.tolist())
    assert sorted(everything) == list(range(n))


def test_identical_on_every_pass_and_every_run(val_files):
    a = ValidationLoader(val_files, 40, 10, rank=1, world_size=2)
    first, second = batches(a), batches(a)
    third = batches(ValidationLoader(val_files, 40, 10, rank=1, world_size=2))
    for run in (second, third):
        for (x, y), (u, v) in zip(first, run, strict=True):
            assert torch.equal(x, u) and torch.equal(y, v)


def test_aligned_validation(tmp_path):
    paths, _ = write_document_shards(tmp_path, [[4, 4, 4, 4, 4, 4]], eot=0)
    val = ValidationLoader(paths, 8, 4, rank=0, world_size=2, mode="aligned")
    (x, y) = batches(val)[0]
    assert x[0] == 0 and x.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 2, 3, 0]


def test_validation_errors(val_files, tmp_path):
    with pytest.raises(ValueError, match=r"multiple of world_size × tokens_per_rank = 2 × 10 = 20"):
        ValidationLoader(val_files, 30, 10, rank=0, world_size=2)
    with pytest.raises(ValueError, match="shards hold 101"):
        ValidationLoader(val_files, 120, 10, rank=0, world_size=2)
    paths, _ = write_document_shards(tmp_path, [[4, 4, 4]], eot=0)
    short = ValidationLoader(paths, 16, 4, rank=0, world_size=2, mode="aligned")
    with pytest.raises(ValueError, match="run out before"):
        batches(short)
