"""Domain labels: JSONL `domain` -> shard side files -> per-token labels of validation batches."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sb_data import (
    DocumentSourceError,
    DomainLabelError,
    ValidationLoader,
    find_shards,
    prepare,
    read_tokens,
    side_file_path,
)
from sb_data.domains import check_domain, read_side_file

# each domain's documents are made of one letter only, so a token's true label can be read off its byte
LETTER = {"alpha": "a", "beta": "b", None: "c"}
BYTE_LABEL = {ord("a"): "alpha", ord("b"): "beta", ord("c"): None}


def _write_labelled(tmp_path, n_docs=60, shard_size=37, seed=1):
    rng = random.Random(seed)
    src = tmp_path / "docs.jsonl"
    with src.open("w") as f:
        for _ in range(n_docs):
            domain = rng.choice(["alpha", "beta", None])
            record = {"text": LETTER[domain] * rng.randint(1, 50)}
            if domain is not None:
                record["domain"] = domain
            f.write(json.dumps(record) + "\n")
    out = tmp_path / "out"
    summary = prepare([src], out, tokenizer="bytes", shard_size=shard_size, val_docs=n_docs, progress=False)
    return out, summary


def _true_labels(inputs: np.ndarray, targets: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The label each input token must get: its letter's domain; an end-of-text token (0) opens the
    document whose first byte is its target."""
    owner = np.where(inputs == 0, targets, inputs)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(BYTE_LABEL[int(b)], -1) for b in owner], dtype=np.int16)


@pytest.mark.parametrize("mode", ["contiguous", "aligned"])
@pytest.mark.parametrize("world", [1, 2])
def test_labels_per_token_match_the_documents_across_shard_and_batch_ends(tmp_path, mode, world):
    out, summary = _write_labelled(tmp_path)
    shards = sorted(out.glob("data_val_*.bin"))
    assert len(shards) > 10  # documents run across many shard ends
    for p in shards:  # a shard with a labelled token has a side file
        if set(read_tokens(p).tolist()) & {ord("a"), ord("b")}:
            assert side_file_path(p).is_file()
    assert set(summary.domain_tokens["val"]) == {"alpha", "beta"}
    T = 16
    n = (400 // (world * T)) * world * T
    seen = set()
    for rank in range(world):
        val = ValidationLoader(shards, n, T, rank=rank, world_size=world, mode=mode,
                               max_seq_len=24 if mode == "aligned" else None)
        labels = val.domain_labels()
        assert labels is not None and labels.names == ("alpha", "beta")
        assert len(labels.labels) == len(val)
        for (x, y), got in zip(val, labels.labels, strict=True):
            assert got.dtype == np.int16 and got.shape == x.shape
            np.testing.assert_array_equal(got, _true_labels(x.numpy(), y.numpy(), labels.names))
            seen.update(got.tolist())
    assert seen == {-1, 0, 1}


def test_patterns_and_folders_skip_side_files(tmp_path):
    out, _ = _write_labelled(tmp_path)
    n = len(list(out.glob("data_val_*.bin")))
    assert len(find_shards(out / "data_val_*")) == len(find_shards(out)) == n
    assert ValidationLoader(out / "data_val_*", 64, 16).domain_labels() is not None


def test_summary_counts_domain_tokens(tmp_path):
    out, summary = _write_labelled(tmp_path, shard_size=1000)
    tokens = np.concatenate(
        [read_tokens(p) for p in sorted(out.glob("data_val_*.bin"))]
    )
    for name, letter in (("alpha", b"a"), ("beta", b"b")):
        docs = [d for d in tokens.astype(np.uint8).tobytes().split(b"\0") if d.startswith(letter)]
        assert summary.domain_tokens["val"][name] == sum(len(d) + 1 for d in docs)


def test_unlabelled_data_has_no_side_files_and_no_labels(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": "x" * i}) + "\n" for i in range(1, 30)))
    prepare([src], tmp_path / "out", tokenizer="bytes", shard_size=50, val_docs=29, progress=False)
    assert not list((tmp_path / "out").glob("*.domains.json"))
    assert ValidationLoader(tmp_path / "out", 100, 50).domain_labels() is None


def test_overwrite_removes_old_side_files(tmp_path):
    out, _ = _write_labelled(tmp_path)
    src = tmp_path / "plain.jsonl"
    src.write_text(json.dumps({"text": "plain"}) + "\n")
    prepare([src], out, tokenizer="bytes", val_docs=1, overwrite=True, progress=False)
    assert not list(out.glob("*.domains.json"))


@pytest.mark.parametrize(
    "value, message",
    [(3, "holds int, not a string"), ("", "is empty"), ("x" * 65, "65 characters long"),
     ("a\nb", "control characters")],
)
def test_bad_domain_in_jsonl_names_file_and_line(tmp_path, value, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "ok", "domain": value}) + "\n")
    with pytest.raises(DocumentSourceError, match=rf"bad.jsonl:2: field 'domain' .*{message}"):
        prepare([src], tmp_path / "out", tokenizer="bytes", val_docs=1, progress=False)


def test_check_domain_accepts_plain_names_and_none():
    assert check_domain("code", "x") == "code" and check_domain(None, "x") is None


def _edit_side(shard_path, **changes):
    path = side_file_path(shard_path)
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_side_file_that_does_not_match_its_shard_is_an_error(tmp_path):
    out, _ = _write_labelled(tmp_path)
    shard = out / "data_val_000003.bin"
    size = read_tokens(shard).size
    _edit_side(shard, tokens=size + 1)
    message = rf"written for {size + 1:,} tokens but the shard holds {size:,}"
    with pytest.raises(DomainLabelError, match=message):
        ValidationLoader(out / "data_val_*.bin", 64, 16)
    _edit_side(shard, tokens=size, shard="data_val_000004.bin")
    with pytest.raises(DomainLabelError, match=r"written for shard 'data_val_000004\.bin'.*--overwrite"):
        read_side_file(shard, size)
    side_file_path(shard).write_text("{not json")
    with pytest.raises(DomainLabelError, match="not a readable domain side file"):
        read_side_file(shard, size)


def test_side_file_run_that_is_not_a_document_start_is_an_error(tmp_path):
    out, _ = _write_labelled(tmp_path, shard_size=1000)
    shard = out / "data_val_000000.bin"
    tokens = read_tokens(shard)
    inside = int(np.flatnonzero(tokens != 0)[5])
    record = json.loads(side_file_path(shard).read_text())
    runs = sorted({tuple(r) for r in record["runs"]} | {(inside, 0)})
    _edit_side(shard, runs=[list(r) for r in runs])
    val = ValidationLoader(shard, 64, 16)
    with pytest.raises(DomainLabelError, match=f"starts at token {inside}, which is not a document start"):
        val.domain_labels()
