import itertools
import json
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sbdata_helpers import write_document_shards, write_stream_shards

from sb_data.format import ShardFormatError, write_shard
from sb_data.loader import DistributedTokenLoader, transfer_and_widen
from sb_data.shards import find_shards

EOT = 0


# -- independent reference models (plain Python, no shared code with the loader) ----------------------


def reference_contiguous(total, step, rank, world, T):
    start = step * world * T + rank * T
    pos = np.arange(start, start + T)
    return pos % total, (pos + 1) % total


def reference_documents(shards, max_seq_len):
    """One epoch of (shard_tokens, start, usable_length) in order, as the aligned mode defines them."""
    out = []
    for tokens in shards:
        starts = [i for i, t in enumerate(tokens) if t == EOT]
        for a, b in zip(starts, [*starts[1:], len(tokens) - 1][: len(starts)], strict=True):
            if b - a > 0:
                out.append((tokens, a, min(b - a, max_seq_len or b - a)))
    return out


def reference_aligned(shards, steps, rank, world, T, max_seq_len=None):
    docs = itertools.cycle(reference_documents(shards, max_seq_len))
    batches = []
    for _ in range(steps):
        for r in range(world):
            inputs, targets = [], []
            while len(inputs) < T:
                tokens, a, n = next(docs)
                n = min(n, T - len(inputs))
                inputs += list(tokens[a : a + n])
                targets += list(tokens[a + 1 : a + n + 1])
            if r == rank:
                batches.append((inputs, targets))
    return batches


def take(loader, n):
    return [(x.clone(), y.clone()) for x, y in itertools.islice(loader, n)]


# -- fixtures --------------------------------------------------------------------------------------

STREAM_SIZES = [10, 1, 0, 25, 7]
DOC_LENGTHS = [[3, 1, 9, 2], [5], [], [12, 4, 4, 1, 7], [2, 2]]
DOC_LEAD = [0, 3, 2, 0, 4]


@pytest.fixture(scope="module")
def stream_files(tmp_path_factory):
    return write_stream_shards(tmp_path_factory.mktemp("stream"), STREAM_SIZES)


@pytest.fixture(scope="module")
def doc_files(tmp_path_factory):
    return write_document_shards(tmp_path_factory.mktemp("docs"), DOC_LENGTHS, eot=EOT, lead=DOC_LEAD)


# -- batching --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("world", "T"), [(1, 1), (1, 8), (3, 7), (4, 13), (2, 60)])
def test_contiguous_matches_reference(stream_files, world, T):
    total = sum(STREAM_SIZES)
    for rank in range(world):
        loader = DistributedTokenLoader(stream_files, T, rank=rank, world_size=world)
        for step, (x, y) in enumerate(take(loader, 25)):
            ex, ey = reference_contiguous(total, step, rank, world, T)
            assert x.dtype == torch.int32 and y.dtype == torch.int64 and x.shape == (T,)
            np.testing.assert_array_equal(x.numpy(), ex)
            np.testing.assert_array_equal(y.numpy(), ey)


@pytest.mark.parametrize(("world", "T", "max_seq_len"), [(1, 5, None), (2, 6, 4), (3, 11, None), (4, 3, 2)])
def test_aligned_matches_reference(doc_files, world, T, max_seq_len):
    paths, arrays = doc_files
    for rank in range(world):
        loader = DistributedTokenLoader(
            paths, T, rank=rank, world_size=world, mode="aligned", max_seq_len=max_seq_len
        )
        expected = reference_aligned(arrays, 20, rank, world, T, max_seq_len)
        for (x, y), (ex, ey) in zip(take(loader, 20), expected, strict=True):
            assert x.tolist() == ex and y.tolist() == ey


def test_ranks_read_disjoint_data(stream_files):
    total, world, T = sum(STREAM_SIZES), 4, 3
    loaders = [DistributedTokenLoader(stream_files, T, rank=r, world_size=world) for r in range(world)]
    seen = []
    for _ in range(total // (world * T)):  # one epoch
        step = [next(loader)[0].numpy() for loader in loaders]
        block = np.concatenate(step)
        assert len(set(block.tolist())) == world * T  # no overlap between ranks within a step
        seen.extend(block.tolist())
    assert len(seen) == len(set(seen))  # nor across steps of one epoch


def test_aligned_ranks_take_disjoint_documents(doc_files):
    paths = doc_files[0]
    world, T = 3, 4
    loaders = [
        DistributedTokenLoader(paths, T, rank=r, world_size=world, mode="aligned") for r in range(world)
    ]
    seen = []
    for _ in range(20):
        step = [next(loader)[0].numpy() for loader in loaders]
        if loaders[0].epoch > 0:  # this step reached into the next epoch
            break
        for x in step:
            seen.extend(x[x != EOT].tolist())
    assert len(seen) > 10
    assert len(seen) == len(set(seen))


def test_alignment_invariant(doc_files):
    """Every batch is a run of document prefixes, each opening with the end-of-text token, and every
    target is the true next token of the stream."""
    paths, arrays = doc_files
    stream = np.concatenate(arrays)
    position_of = {int(t): i for i, t in enumerate(stream) if t != EOT}
    for max_seq_len in (None, 3):
        loader = DistributedTokenLoader(
            paths, 9, rank=1, world_size=2, mode="aligned", max_seq_len=max_seq_len
        )
        for x, y in take(loader, 15):
            x, y = x.numpy(), y.numpy()
            assert x[0] == EOT
            cuts = np.flatnonzero(x == EOT)
            for a, b in zip(cuts, [*cuts[1:], x.size], strict=True):
                piece = x[a:b]
                assert max_seq_len is None or piece.size <= max_seq_len
                if piece.size > 1:
                    start = position_of[int(piece[1])] - 1
                    assert stream[start] == EOT
                    np.testing.assert_array_equal(piece, stream[start : start + piece.size])
                    np.testing.assert_array_equal(y[a:b], stream[start + 1 : start + piece.size + 1])


def test_rollover_and_epoch_counter(stream_files, doc_files):
    total = sum(STREAM_SIZES)
    loader = DistributedTokenLoader(stream_files, 10, rank=0, world_size=1)
    assert loader.epoch == 0
    batches = take(loader, 5)  # 50 tokens > one epoch of 43
    assert loader.epoch == 1
    x, y = batches[4]
    np.testing.assert_array_equal(x.numpy(), np.arange(40, 50) % total)  # wraps into epoch 1
    np.testing.assert_array_equal(y.numpy(), np.arange(41, 51) % total)

    paths, arrays = doc_files
    per_epoch = sum(n for _, _, n in reference_documents(arrays, None))
    aligned = DistributedTokenLoader(paths, per_epoch, rank=0, world_size=1, mode="aligned")
    first, second = take(aligned, 2)
    assert aligned.epoch == 2
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_shuffled_shard_order_is_deterministic_per_epoch(stream_files):
    def epoch_orders(seed):
        loader = DistributedTokenLoader(stream_files, 1, shuffle_shards=True, seed=seed)
        return [loader.shards.order(e).tolist() for e in range(6)]

    assert epoch_orders(1) == epoch_orders(1)
    assert len({tuple(o) for o in epoch_orders(1)}) > 1
    assert epoch_orders(1) != epoch_orders(2)
    loader = DistributedTokenLoader(stream_files, 43, shuffle_shards=True, seed=1)
    for epoch in range(3):
        x = next(loader)[0].numpy()
        sizes = np.array(STREAM_SIZES)
        starts = np.cumsum(sizes) - sizes
        order = loader.shards.order(epoch)
        expected = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in order])
        np.testing.assert_array_equal(x, expected)


# -- exact resume ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["contiguous", "aligned"]),
    world=st.integers(1, 4),
    rank_seed=st.integers(0, 3),
    T=st.integers(1, 30),
    max_seq_len=st.one_of(st.none(), st.integers(1, 12)),
    shuffle=st.booleans(),
    cut=st.integers(0, 40),
    more=st.integers(1, 8),
)
def test_resume_at_any_step_equals_uninterrupted(
    stream_files, doc_files, mode, world, rank_seed, T, max_seq_len, shuffle, cut, more
):
    files = stream_files if mode == "contiguous" else doc_files[0]
    kwargs = dict(
        rank=rank_seed % world,
        world_size=world,
        mode=mode,
        max_seq_len=max_seq_len if mode == "aligned" else None,
        shuffle_shards=shuffle,
        seed=7,
    )
    original = DistributedTokenLoader(files, T, **kwargs)
    take(original, cut)
    state = json.loads(json.dumps(original.state_dict()))  # plain values only
    expected = take(original, more)
    resumed = DistributedTokenLoader(files, T, **kwargs)
    resumed.load_state_dict(state)
    got = take(resumed, more)
    assert resumed.step == original.step and resumed.epoch == original.epoch
    for (a, b), (c, d) in zip(expected, got, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


@pytest.mark.parametrize("mode", ["contiguous", "aligned"])
def test_resume_is_constant_time(stream_files, doc_files, mode):
    """A state a trillion epochs in loads and yields at once, without replaying anything."""
    files = stream_files if mode == "contiguous" else doc_files[0]
    fresh = DistributedTokenLoader(files, 5, mode=mode)
    take(fresh, 3)
    state = fresh.state_dict()
    expected = take(fresh, 2)
    far = dict(state, epoch=10**12, step=10**13)
    work = []
    for saved in (state, far):
        resumed = DistributedTokenLoader(files, 5, mode=mode, prefetch=False)
        resumed.load_state_dict(saved)  # a replay of 1e12 epochs would never return
        got = take(resumed, 2)
        work.append(resumed.stats.shard_loads)
        assert resumed.epoch >= saved["epoch"] and resumed.step == saved["step"] + 2
        for (a, b), (c, d) in zip(expected, got, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)
    assert work[0] == work[1]  # the same shard reads near the start and a trillion epochs in


def test_resume_with_another_world_size_continues_the_stream(stream_files):
    total = sum(STREAM_SIZES)
    a = DistributedTokenLoader(stream_files, 4, rank=0, world_size=2)
    take(a, 3)  # 24 tokens consumed globally
    state = a.state_dict()
    b = DistributedTokenLoader(stream_files, 2, rank=3, world_size=4)
    b.load_state_dict(state)
    np.testing.assert_array_equal(next(b)[0].numpy(), np.arange(24 + 6, 24 + 8) % total)


def test_batch_shape_can_change_between_steps(stream_files, doc_files):
    total = sum(STREAM_SIZES)
    loader = DistributedTokenLoader(stream_files, 4, rank=1, world_size=2)
    next(loader)  # global tokens 0..7
    loader.set_batch_shape(tokens_per_rank=3)
    np.testing.assert_array_equal(next(loader)[0].numpy(), np.arange(8 + 3, 8 + 6) % total)
    aligned = DistributedTokenLoader(doc_files[0], 6, mode="aligned", max_seq_len=5)
    next(aligned)
    aligned.set_batch_shape(max_seq_len=2)
    x = next(aligned)[0].numpy()
    assert np.diff(np.flatnonzero(x == EOT)).max() <= 2
    with pytest.raises(ValueError, match="aligned"):
        loader.set_batch_shape(max_seq_len=3)


def test_state_from_other_data_is_refused(stream_files, doc_files, tmp_path):
    loader = DistributedTokenLoader(stream_files, 4)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="belongs to other shards"):
        DistributedTokenLoader(stream_files[:-1], 4).load_state_dict(state)
    with pytest.raises(ValueError, match="mode='contiguous'"):
        DistributedTokenLoader(doc_files[0], 4, mode="aligned").load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle_shards=False, seed=0"):
        DistributedTokenLoader(stream_files, 4, shuffle_shards=True).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        loader.load_state_dict({"step": 3})
    with pytest.raises(ValueError, match="corrupt loader state"):
        loader.load_state_dict(dict(state, position=STREAM_SIZES[0]))
    with pytest.raises(ValueError, match="corrupt loader state"):
        loader.load_state_dict(dict(state, shard=len(STREAM_SIZES)))


# -- background loading ----------------------------------------------------------------------------


def test_next_shard_is_read_in_the_background(tmp_path):
    paths = write_stream_shards(tmp_path, [100, 100, 100])
    loader = DistributedTokenLoader(paths, 10)
    next(loader)  # waits for shard 0 (nothing to prefetch before the first step)
    deadline = time.time() + 10
    while loader.stats.shard_loads < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert loader.stats.shard_loads == 2  # shard 1 was read while the step's caller worked
    waits = loader.stats.blocking_waits
    take(loader, 12)  # crosses into shard 1
    assert loader.stats.blocking_waits == waits


# -- bad input -------------------------------------------------------------------------------------


def test_loader_reports_bad_shards(tmp_path):
    good = write_stream_shards(tmp_path / "a", [50, 50])
    truncated = tmp_path / "a" / "pos_000001.bin"
    truncated.write_bytes(truncated.read_bytes()[:-4])
    with pytest.raises(ShardFormatError, match=r"pos_000001.bin: truncated"):
        DistributedTokenLoader(good, 10)

    paths = write_stream_shards(tmp_path / "b", [50, 50])
    loader = DistributedTokenLoader(paths, 10, vocab_size=60)  # shard 1 holds ids 50..99
    take(loader, 4)
    with pytest.raises(ShardFormatError, match=r"pos_000001.bin: token id 60 at token 10 is >= the expected"):
        take(loader, 2)


def test_loader_argument_errors(stream_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard files match"):
        find_shards(str(tmp_path / "nothing_*.bin"))
    with pytest.raises(ValueError, match="rank < world_size"):
        DistributedTokenLoader(stream_files, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_seq_len applies to mode='aligned' only"):
        DistributedTokenLoader(stream_files, 4, max_seq_len=3)
    write_shard(tmp_path / "n.bin", np.arange(1, 20, dtype=np.uint16))
    with pytest.raises(ValueError, match="found no document start"):
        next(DistributedTokenLoader(tmp_path / "n.bin", 4, mode="aligned", eot_id=0))
    write_shard(tmp_path / "w.bin", np.arange(70000, 70010, dtype=np.uint32))
    with pytest.raises(ValueError, match="mix header versions"):
        DistributedTokenLoader([tmp_path / "n.bin", tmp_path / "w.bin"], 4)


def test_rank_and_world_default_to_single_process(stream_files):
    loader = DistributedTokenLoader(stream_files, 4)
    assert (loader.rank, loader.world_size) == (0, 1)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_device_transfer_path_widens_without_sign_errors(dtype):
    """The CUDA path's staging and widening, run on the CPU (no pinning): ids at the top of the
    unsigned range must come back unchanged."""
    top = np.iinfo(dtype).max if dtype == np.uint16 else 2**31 - 1
    values = np.array([0, 1, 32767, 32768, 65535, top], dtype=dtype)
    x, y = transfer_and_widen(values, values[::-1].copy(), torch.device("cpu"), pin_memory=False)
    assert x.dtype == torch.int32 and y.dtype == torch.int64
    assert (
        x.tolist() == values.astype(np.int64).tolist()
        and y.tolist() == values[::-1].astype(np.int64).tolist()
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["contiguous", "aligned"])
def test_cuda_batches_equal_cpu_batches(doc_files, tmp_path, mode):
    for files in (doc_files[0], write_shard_v1(tmp_path)):
        cpu = DistributedTokenLoader(files, 16, mode=mode)
        gpu = DistributedTokenLoader(files, 16, mode=mode, device="cuda")
        assert gpu.pin_memory
        for (a, b), (c, d) in zip(take(cpu, 10), take(gpu, 10), strict=True):
            assert c.is_cuda and c.dtype == torch.int32 and d.dtype == torch.int64
            assert torch.equal(a, c.cpu()) and torch.equal(b, d.cpu())


def write_shard_v1(folder):
    tokens = np.tile(np.array([0, 65535, 40000, 1, 2, 3], dtype=np.uint16), 20)
    path = folder / "v1.bin"
    write_shard(path, tokens, version=1)
    return path
