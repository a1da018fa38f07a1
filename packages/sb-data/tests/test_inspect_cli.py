import json
from pathlib import Path

import numpy as np
import pytest
from sbdata_helpers import BPE_DIR, real_text_files

from sb_data.cli import main
from sb_data.format import write_shard
from sb_data.inspection import inspect_shard
from sb_data.prepare import prepare


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    files = [str(p) for p in real_text_files(3)]
    gpt2 = prepare(files, root / "g", bpe_dir=BPE_DIR, val_docs=0, progress=False)
    raw = prepare(files, root / "b", tokenizer="bytes", val_docs=0, progress=False)
    return gpt2.shards["train"][0], raw.shards["train"][0], files


def test_inspect_gpt2_shard(shards):
    path, _, files = shards
    report = inspect_shard(path, first=16, bpe_dir=BPE_DIR)
    assert report.version == 1 and report.token_dtype == "uint16"
    assert report.vocab_size == 50257 and report.eot_id == 50256
    assert report.documents == 3 and report.max_id <= 50256
    original = Path(files[0]).read_text(encoding="utf-8")
    assert report.first_text.startswith("<|endoftext|>")
    assert original.startswith(report.first_text.removeprefix("<|endoftext|>"))


def test_inspect_bytes_shard_decodes_without_files(shards):
    _, path, files = shards
    report = inspect_shard(path, first=40)
    original = Path(files[0]).read_text(encoding="utf-8")
    assert report.vocab_size == 256 and report.eot_id == 0 and report.documents == 3
    assert report.first_text == "<|endoftext|>" + original[:39]


def test_cli_inspect_text_json_and_errors(shards, tmp_path, capsys):
    path, raw, _ = shards
    speedrun = tmp_path / "fineweb_val_000000.bin"
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, 4]
    speedrun.write_bytes(header.tobytes() + np.array([50256, 15496, 995, 50256], dtype=np.uint16).tobytes())
    assert main(["inspect", str(path), str(speedrun), "--bpe-dir", str(BPE_DIR), "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "version 1 (uint16 tokens)" in out and "not recorded (speedrun-style header)" in out
    assert "'<|endoftext|>Hello world<|endoftext|>'" in out
    assert main(["inspect", str(raw), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["vocab_size"] == 256 and record["documents"] == 3
    broken = tmp_path / "broken.bin"
    broken.write_bytes(speedrun.read_bytes()[:-1])
    assert main(["inspect", str(broken), str(raw), "--tokenizer", "none"]) == 1
    captured = capsys.readouterr()
    assert f"{broken}: truncated" in captured.err and str(raw) in captured.out


def test_inspect_without_bpe_files_still_reports(shards, monkeypatch):
    import tiktoken

    path, _, _ = shards

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.delenv("SB_DATA_BPE_DIR", raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    report = inspect_shard(path)
    assert report.first_text is None and "--bpe-dir" in report.note


def test_inspect_uint32_shard(tmp_path):
    path = tmp_path / "wide.bin"
    write_shard(path, np.array([100276, 1, 2, 199997], dtype=np.uint32), vocab_size=200019, eot_id=100276)
    report = inspect_shard(path, tokenizer=None)
    assert report.version == 2 and report.token_dtype == "uint32" and report.max_id == 199997
    assert report.documents == 1
