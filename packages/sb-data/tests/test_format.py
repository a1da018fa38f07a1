import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sb_data.format import (
    HEADER_BYTES,
    MAGIC,
    ShardFormatError,
    ShardHeader,
    read_header,
    read_tokens,
    write_shard,
)


def speedrun_style_file(path, tokens):
    """Bytes exactly as modded-nanogpt's data/fineweb.py writes them (zeros beyond slot 2)."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def test_speedrun_file_loads_unchanged(tmp_path):
    tokens = np.array([50256, 464, 2068, 7586, 50256, 15496, 995], dtype=np.uint16)
    path = tmp_path / "fineweb_val_000000.bin"
    speedrun_style_file(path, tokens)
    header = read_header(path)
    assert header == ShardHeader(version=1, num_tokens=7, vocab_size=None, eot_id=None)
    np.testing.assert_array_equal(read_tokens(path), tokens)


def test_v1_writer_output_is_speedrun_compatible(tmp_path):
    tokens = np.array([50256, 1, 2, 65535], dtype=np.uint16)
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [MAGIC, 1, 4]
    assert len(raw) == HEADER_BYTES + 2 * 4
    np.testing.assert_array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype="<u2"), tokens)


@pytest.mark.parametrize(
    ("version", "tokens", "vocab", "eot"),
    [
        (1, [0, 5, 65535], None, None),
        (1, [50256, 10, 20], 50257, 50256),
        (2, [0, 70000, 2**31 - 1], None, None),
        (2, [100276, 3, 200000], 200019, 100276),
        (None, [1, 2, 3], None, None),
        (None, [1, 2, 70000], None, None),
    ],
)
def test_round_trip_both_versions(tmp_path, version, tokens, vocab, eot):
    path = tmp_path / "s.bin"
    written = write_shard(
        path, np.array(tokens, dtype=np.int64), version=version, vocab_size=vocab, eot_id=eot
    )
    expect_version = version or (1 if max(tokens) < 65536 else 2)
    assert written.version == expect_version
    header = read_header(path)
    assert header == written
    assert header.vocab_size == vocab and header.eot_id == eot
    assert path.stat().st_size == header.file_size
    out = read_tokens(path)
    assert out.dtype == (np.uint16 if expect_version == 1 else np.uint32)
    np.testing.assert_array_equal(out, tokens)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**31 - 1), max_size=200), st.sampled_from([None, 2]))
def test_round_trip_property(tmp_path_factory, tokens, version):
    path = tmp_path_factory.mktemp("rt") / "p.bin"
    write_shard(path, np.array(tokens, dtype=np.int64), version=version)
    np.testing.assert_array_equal(read_tokens(path), np.array(tokens, dtype=np.int64))


def test_empty_shard_round_trip(tmp_path):
    path = tmp_path / "e.bin"
    write_shard(path, np.zeros(0, dtype=np.uint16))
    assert read_header(path).num_tokens == 0
    assert read_tokens(path).size == 0


def _good(tmp_path, n=10):
    path = tmp_path / "bad.bin"
    write_shard(path, np.arange(n, dtype=np.uint16), vocab_size=100, eot_id=0)
    return path


def _patch_int(path, slot, value):
    raw = bytearray(path.read_bytes())
    raw[4 * slot : 4 * slot + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _patch_int(p, 0, 12345), "wrong magic number 12345"),
        (lambda p: _patch_int(p, 1, 7), "unknown header version 7"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "less than the 1024-byte header"),
        (lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated: the header declares 10 tokens"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0\0\0"), "disagrees with the file size"),
        (lambda p: _patch_int(p, 2, -5), "negative token count"),
        (lambda p: _patch_int(p, 4, 100), "end-of-text id 100"),
    ],
    ids=["magic", "version", "short-header", "truncated", "extra-bytes", "negative-count", "eot"],
)
def test_bad_files_raise_with_file_and_problem(tmp_path, damage, message):
    path = _good(tmp_path)
    damage(path)
    with pytest.raises(ShardFormatError, match=message) as info:
        read_tokens(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


def test_token_above_declared_vocab(tmp_path):
    path = _good(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 2 * 7 : HEADER_BYTES + 2 * 8] = np.uint16(100).tobytes()  # vocab is 100
    path.write_bytes(bytes(raw))
    read_header(path)  # the header alone is fine
    with pytest.raises(
        ShardFormatError, match=r"token id 100 at token 7 is >= the declared vocabulary size 100"
    ):
        read_tokens(path)


def test_token_above_callers_vocab(tmp_path):
    path = tmp_path / "s.bin"
    speedrun_style_file(path, [50256, 1, 60000])
    with pytest.raises(
        ShardFormatError, match=r"s.bin: token id 60000 at token 2 is >= the expected vocabulary"
    ):
        read_tokens(path, vocab_size=50257)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        read_header(tmp_path / "nope.bin")


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not fit header version 1"):
        write_shard(tmp_path / "x.bin", np.array([70000]), version=1)
    with pytest.raises(ValueError, match=">= vocab_size"):
        write_shard(tmp_path / "x.bin", np.array([5]), vocab_size=5)
    with pytest.raises(ValueError, match="negative token id"):
        write_shard(tmp_path / "x.bin", np.array([-1]))
    with pytest.raises(ValueError, match="1-D"):
        write_shard(tmp_path / "x.bin", np.zeros((2, 2), dtype=np.uint16))
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10, dtype=np.uint16))
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_shard(path, np.arange(20, dtype=np.uint16))
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # and no temporary is left
