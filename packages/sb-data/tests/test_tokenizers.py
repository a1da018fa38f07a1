import shutil

import numpy as np
import pytest
from sbdata_helpers import BPE_DIR, real_texts

from sb_data.tokenizers import (
    BPE_DIR_ENV,
    ByteTokenizer,
    DocumentEncodingError,
    TokenizerUnavailableError,
    get_tokenizer,
)


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2", bpe_dir=BPE_DIR)


def test_gpt2_from_local_files(gpt2):
    assert gpt2.encode("Hello world").tolist() == [15496, 995]
    assert (gpt2.vocab_size, gpt2.eot_id) == (50257, 50256)
    # special-token text is ordinary text, as in the speedrun's encode_ordinary
    assert 50256 not in gpt2.encode("a <|endoftext|> b").tolist()


def test_gpt2_round_trips_real_text(gpt2):
    for text in real_texts(4):
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_from_environment_variable(monkeypatch):
    monkeypatch.setenv(BPE_DIR_ENV, str(BPE_DIR))
    assert get_tokenizer("gpt2").encode("Hello world").tolist() == [15496, 995]


def test_missing_bpe_files_say_how_to_provide_them(tmp_path):
    shutil.copy(BPE_DIR / "vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerUnavailableError) as info:
        get_tokenizer("gpt2", bpe_dir=tmp_path)
    message = str(info.value)
    assert "encoder.json not found in" in message
    assert "--bpe-dir FOLDER" in message and f"{BPE_DIR_ENV}=FOLDER" in message


def test_wrong_bpe_file_is_rejected(tmp_path):
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    shutil.copy(BPE_DIR / "encoder.json", tmp_path / "encoder.json")
    with pytest.raises(TokenizerUnavailableError, match="not the published"):
        get_tokenizer("gpt2", bpe_dir=tmp_path)


def test_fetch_failure_gives_exact_instructions(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.delenv(BPE_DIR_ENV, raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerUnavailableError) as info:
        get_tokenizer("gpt2")
    message = str(info.value)
    assert "fetching them failed (ConnectionError: Failed to resolve" in message
    assert "vocab.bpe and encoder.json" in message
    assert "pass --bpe-dir FOLDER (Python: bpe_dir=FOLDER)" in message
    assert f"set the environment variable {BPE_DIR_ENV}=FOLDER" in message


def test_bytes_tokenizer():
    tok = get_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 256 and tok.eot_id == 0
    text = "naïve café — 東京"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and tok.decode(ids) == text
    with pytest.raises(DocumentEncodingError, match="NUL character"):
        tok.encode("a\x00b")


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        get_tokenizer("gpt5")


def test_gpt2_encoding_releases_the_gil(gpt2):
    """The writer's thread pool uses every core only if encode() runs without the GIL: then calls from
    two threads overlap in time (a call holding the GIL could never be interleaved with another)."""
    import threading
    import time

    text = real_texts(1)[0] * 30
    spans: dict[int, list[tuple[float, float]]] = {0: [], 1: []}

    def work(i):
        for _ in range(2):
            t0 = time.perf_counter()
            gpt2.encode(text)
            spans[i].append((t0, time.perf_counter()))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    overlap = sum(max(0.0, min(b, d) - max(a, c)) for a, b in spans[0] for c, d in spans[1])
    assert overlap > 0
