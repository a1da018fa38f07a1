"""Tokenizers for the writer: GPT-2 BPE through tiktoken (offline from local files), and raw bytes.

Every tokenizer encodes one document to a numpy array of ids and is safe to call from several threads
at once; tiktoken releases the GIL while it encodes, so a thread pool uses every core.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

BPE_DIR_ENV = "SB_DATA_BPE_DIR"
GPT2_FILES = ("vocab.bpe", "encoder.json")
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_EOT = 50256
GPT2_VOCAB = 50257


class TokenizerUnavailableError(RuntimeError):
    """The tokenizer's files could not be found or fetched; the message says how to provide them."""


class DocumentEncodingError(ValueError):
    """A document cannot be encoded by the chosen tokenizer."""


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` without any end-of-text token (special-token strings are plain text)."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids: vocabulary 256, no files. Byte 0 (NUL) is the end-of-text token."""

    name = "bytes"
    vocab_size = 256
    eot_id = 0

    def encode(self, text: str) -> np.ndarray:
        data = text.encode("utf-8", errors="surrogatepass")
        if b"\x00" in data:
            raise DocumentEncodingError(
                "the document contains a NUL character, which the bytes tokenizer reserves as its "
                "end-of-text token; remove NUL characters from the input or use --tokenizer gpt2"
            )
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """A tiktoken encoding; ``encode`` is tiktoken's ordinary encoding (no special tokens)."""

    def __init__(self, name: str, encoding) -> None:
        self.name = name
        self._enc = encoding
        self.vocab_size = int(encoding.n_vocab)
        self.eot_id = int(encoding.eot_token)

    def encode(self, text: str) -> np.ndarray:
        try:
            return self._enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            # Lone surrogates (e.g. from JSON escapes) cannot go to the Rust core; replace them as
            # tiktoken's own encode() does.
            fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._enc.encode_to_numpy(fixed, disallowed_special=())

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._enc.decode(np.asarray(ids).tolist())


def bpe_help(reason: str) -> str:
    return (
        f"The gpt2 tokenizer needs OpenAI's GPT-2 BPE files, which could not be loaded: {reason}. "
        f"To work offline, put vocab.bpe and encoder.json (from {GPT2_URL}vocab.bpe and "
        f"{GPT2_URL}encoder.json) in one folder and pass --bpe-dir FOLDER (Python: bpe_dir=FOLDER), "
        f"or set the environment variable {BPE_DIR_ENV}=FOLDER."
    )


def load_gpt2_from_dir(folder: str | os.PathLike[str]) -> TiktokenTokenizer:
    """Build tiktoken's GPT-2 encoding from ``vocab.bpe`` and ``encoder.json`` in ``folder``."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    folder = Path(folder)
    missing = [name for name in GPT2_FILES if not (folder / name).is_file()]
    if missing:
        raise TokenizerUnavailableError(bpe_help(f"{', '.join(missing)} not found in {folder}"))
    vocab_bpe = folder / "vocab.bpe"
    digest = hashlib.sha256(vocab_bpe.read_bytes()).hexdigest()
    if digest != GPT2_VOCAB_BPE_SHA256:
        raise TokenizerUnavailableError(
            bpe_help(f"{vocab_bpe} has sha256 {digest}, not the published {GPT2_VOCAB_BPE_SHA256}")
        )
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(folder / "encoder.json"))
    except Exception as exc:  # a malformed encoder.json surfaces as assorted errors
        raise TokenizerUnavailableError(
            bpe_help(f"{folder / 'encoder.json'} is unreadable ({exc!r})")
        ) from exc
    encoding = tiktoken.Encoding(
        "gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB,
    )
    return TiktokenTokenizer("gpt2", encoding)


def load_tiktoken(name: str) -> TiktokenTokenizer:
    """A named tiktoken encoding from tiktoken's cache or the network."""
    import tiktoken

    try:
        encoding = tiktoken.get_encoding(name)
    except ValueError as exc:
        if "Unknown encoding" in str(exc):
            raise ValueError(f"unknown tiktoken encoding {name!r}: {exc}") from exc
        raise TokenizerUnavailableError(bpe_help(f"fetching them failed ({exc})")) from exc
    except Exception as exc:  # requests' connection errors, blobfile errors, ...
        if name == "gpt2":
            raise TokenizerUnavailableError(
                bpe_help(f"fetching them failed ({type(exc).__name__}: {exc})")
            ) from exc
        raise TokenizerUnavailableError(
            f"tiktoken could not fetch the files of encoding {name!r} ({type(exc).__name__}: {exc}); "
            "run once with network access or point TIKTOKEN_CACHE_DIR at a filled cache"
        ) from exc
    return TiktokenTokenizer(name, encoding)


TOKENIZER_NAMES = ("gpt2", "bytes", "tiktoken:<encoding>")


def get_tokenizer(name: str = "gpt2", *, bpe_dir: str | os.PathLike[str] | None = None) -> Tokenizer:
    """Resolve a tokenizer by name.

    ``gpt2`` reads the BPE files from ``bpe_dir``, else from ``$SB_DATA_BPE_DIR``, else asks tiktoken
    (its cache, then the network). ``bytes`` needs nothing. ``tiktoken:NAME`` is any tiktoken encoding.
    """
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        folder = bpe_dir if bpe_dir is not None else os.environ.get(BPE_DIR_ENV) or None
        if folder is not None:
            return load_gpt2_from_dir(folder)
        return load_tiktoken("gpt2")
    if name.startswith("tiktoken:"):
        return load_tiktoken(name.split(":", 1)[1])
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")


def tokenizer_for_header(
    vocab_size: int | None, *, bpe_dir: str | os.PathLike[str] | None = None
) -> Tokenizer:
    """The tokenizer that most likely wrote a shard: bytes for vocabulary 256, else GPT-2."""
    if vocab_size == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    return get_tokenizer("gpt2", bpe_dir=bpe_dir)
