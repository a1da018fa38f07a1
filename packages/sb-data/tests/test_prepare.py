import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sbdata_helpers import BPE_DIR, real_text_files, real_texts

from sb_data.cli import main
from sb_data.format import read_header, read_tokens
from sb_data.prepare import ValidationRule, prepare
from sb_data.sources import DocumentSourceError, expand_inputs
from sb_data.tokenizers import DocumentEncodingError, get_tokenizer


def split_stream(paths, eot):
    """Concatenate shards and cut them into documents (each starts with eot)."""
    stream = np.concatenate([read_tokens(p) for p in paths])
    assert stream.size == 0 or stream[0] == eot, "the stream must open with the end-of-text token"
    cuts = np.flatnonzero(stream == eot)
    return [stream[a + 1 : b] for a, b in zip(cuts, [*cuts[1:], stream.size], strict=True)]


def decoded_docs(summary, split, tok):
    return [tok.decode(d) for d in split_stream(summary.shards[split], tok.eot_id)]


def test_prepare_real_text_gpt2_round_trip(tmp_path):
    """End to end on real text: shards decode back to the original documents, split by document."""
    files = real_text_files()
    originals = [p.read_text(encoding="utf-8") for p in files]
    summary = prepare(
        [str(p) for p in files],
        tmp_path / "out",
        tokenizer="gpt2",
        bpe_dir=BPE_DIR,
        shard_size=5_000,
        val_docs=3,
        workers=2,
        progress=False,
    )
    tok = get_tokenizer("gpt2", bpe_dir=BPE_DIR)
    val, train = decoded_docs(summary, "val", tok), decoded_docs(summary, "train", tok)
    assert val == originals[:3]
    assert train == originals[3:]
    assert not set(val) & set(train)
    # fixed-size shards: all full except the last of each split
    for split in ("train", "val"):
        sizes = [read_header(p).num_tokens for p in summary.shards[split]]
        assert all(s == 5_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 5_000
        assert sum(sizes) == summary.tokens[split]
        for p in summary.shards[split]:
            header = read_header(p)
            assert (header.version, header.vocab_size, header.eot_id) == (1, 50257, 50256)
    assert summary.documents == {"val": 3, "train": len(files) - 3}
    record = json.loads((tmp_path / "out" / "data_summary.json").read_text())
    assert record["tokens"] == summary.tokens and record["tokens_per_second"] > 0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_val_fraction_is_by_document_and_deterministic(tmp_path):
    texts = [f"document number {i}: " + t[:200] for i, t in enumerate(real_texts() * 10)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    runs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        s = prepare(
            [jsonl], out, tokenizer="bytes", shard_size=997, val_fraction=0.25, workers=workers, seed=3
        )
        runs.append(s)
    a, b = runs
    assert [read_tokens(p).tobytes() for p in a.shards["train"]] == [
        read_tokens(p).tobytes() for p in b.shards["train"]
    ]
    tok = get_tokenizer("bytes")
    val, train = decoded_docs(a, "val", tok), decoded_docs(a, "train", tok)
    rule = ValidationRule(fraction=0.25, seed=3)
    assert val == [t for i, t in enumerate(texts) if rule.is_val(i)]
    assert train == [t for i, t in enumerate(texts) if not rule.is_val(i)]
    assert not set(val) & set(train)
    assert 0.1 < len(val) / len(texts) < 0.4


def test_jsonl_gz_and_parquet_inputs(tmp_path):
    texts = real_texts(6)
    gz = tmp_path / "part1.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        for t in texts[:3]:
            f.write(json.dumps({"content": t}) + "\n\n")
    pq.write_table(pa.table({"content": texts[3:], "n": list(range(3))}), tmp_path / "part2.parquet")
    s = prepare(
        [str(tmp_path / "part*")], tmp_path / "out", tokenizer="bytes", text_field="content", val_docs=0
    )
    assert decoded_docs(s, "train", get_tokenizer("bytes")) == texts
    assert s.documents == {"val": 0, "train": 6}
    assert s.warnings == []


def test_header_version_2_from_prepare(tmp_path):
    text = real_texts(1)[0]
    (tmp_path / "a.txt").write_text(text)
    s = prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer="bytes", header_version=2, val_docs=0)
    assert read_header(s.shards["train"][0]).version == 2
    assert decoded_docs(s, "train", get_tokenizer("bytes")) == [text]


def test_inputs_folder_recursive_and_missing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("b")
    (tmp_path / "d" / "sub" / "a.txt").write_text("a")
    (tmp_path / "d" / ".hidden").write_text("h")
    assert [p.name for p in expand_inputs([tmp_path / "d"])] == ["b.txt", "a.txt"]
    with pytest.raises(DocumentSourceError, match="no such file or folder"):
        expand_inputs([tmp_path / "missing.txt"])
    with pytest.raises(DocumentSourceError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.nothing")])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"text": "ok"}\n{"body": "x"}\n', r"a.jsonl:2: no field 'text' \(fields: body\)"),
        ("b.jsonl", '{"text": "ok"}\nnot json\n', r"b.jsonl:2: not valid JSON"),
        ("c.jsonl", '{"text": 5}\n', r"c.jsonl:1: field 'text' holds int"),
        ("d.txt", b"caf\xe9", r"d.txt: not UTF-8 text \(bad byte at offset 3\)"),
    ],
)
def test_bad_inputs_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DocumentSourceError, match=message):
        prepare([path], tmp_path / "out", tokenizer="bytes")


def test_parquet_missing_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(DocumentSourceError, match=r"t.parquet: no column 'text' \(columns: body\)"):
        prepare([tmp_path / "t.parquet"], tmp_path / "out", tokenizer="bytes")


def test_output_folder_inside_the_inputs_is_not_read_back(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(real_texts(1)[0])
    for _ in range(2):
        s = prepare([corpus], corpus / "shards", tokenizer="bytes", val_docs=0, overwrite=True)
        assert s.inputs == [str(corpus / "a.txt")] and s.documents["train"] == 1


def test_existing_outputs_need_overwrite(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer="bytes")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer="bytes")
    prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer="bytes", overwrite=True)


def test_interrupted_run_leaves_only_whole_shards(tmp_path):
    paragraphs = [line for t in real_texts(6) for line in t.splitlines() if line.strip()][:1200]
    records = [{"text": p} for p in paragraphs] + [{"text": "bad \x00 byte"}]  # refused at the very end
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    with pytest.raises(DocumentEncodingError, match=rf"in.jsonl:{len(records)}: the document contains a NUL"):
        prepare([jsonl], out, tokenizer="bytes", shard_size=4096, val_docs=0, workers=1)
    names = sorted(p.name for p in out.iterdir())
    assert names and all(n.startswith("data_train_") and n.endswith(".bin") for n in names)
    for p in out.iterdir():
        assert read_header(p).num_tokens == 4096  # every shard on disk is whole
    assert not (out / "data_summary.json").exists()


def test_cli_prepare_and_summary(tmp_path, capsys):
    files = [str(p) for p in real_text_files(4)]
    code = main(
        ["prepare", *files, "-o", str(tmp_path / "o"), "--bpe-dir", str(BPE_DIR), "--val-docs", "1",
         "--shard-size", "100_000", "--prefix", "lic", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "documents: 4 (train 3, val 1" in out and "tokens/s" in out and "shards:    train 1, val 1" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "lic_summary.json",
        "lic_train_000000.bin",
        "lic_val_000000.bin",
    ]
    tok = get_tokenizer("gpt2", bpe_dir=BPE_DIR)
    originals = [Path(f).read_text(encoding="utf-8") for f in files]
    for split, expected in (("val", originals[:1]), ("train", originals[1:])):
        docs = split_stream([tmp_path / "o" / f"lic_{split}_000000.bin"], tok.eot_id)
        assert [tok.decode(d) for d in docs] == expected
    code = main(["prepare", files[0], "-o", str(tmp_path / "o"), "--prefix", "lic", "--tokenizer", "bytes"])
    assert code == 2  # the fix is an option (--overwrite): a usage error
    assert "--overwrite" in capsys.readouterr().err
