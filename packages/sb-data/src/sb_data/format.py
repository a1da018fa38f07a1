"""The ``.bin`` token-shard format, reading with full validation, and atomic writing.

Layout (all integers little-endian)::

    bytes 0..1023   header: 256 int32
                      [0] magic 20240520
                      [1] version: 1 = tokens are uint16, 2 = tokens are uint32
                      [2] number of tokens N
                      [3] vocabulary size (0 = not recorded)
                      [4] end-of-text token id (meaningful only when [3] > 0)
                      [5..255] zero
    bytes 1024..    N tokens, uint16 (version 1) or uint32 (version 2)

Version 1 with slots [3..255] zero is exactly modded-nanogpt's format, so the public FineWeb shards load
unchanged; the speedrun's readers ignore slots 3 and 4, so shards written here stay readable there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sb_data.atomic import atomic_write

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSION_UINT16 = 1
VERSION_UINT32 = 2
TOKEN_DTYPES: dict[int, np.dtype] = {VERSION_UINT16: np.dtype("<u2"), VERSION_UINT32: np.dtype("<u4")}
# The header stores counts and ids as int32.
MAX_INT32 = 2**31 - 1


class ShardFormatError(ValueError):
    """A shard file is malformed. The message names the file, the problem and what to do."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard."""

    version: int
    num_tokens: int
    vocab_size: int | None = None
    """Vocabulary size recorded by the writer; None in files that do not record it (speedrun shards)."""
    eot_id: int | None = None
    """End-of-text (document separator) id recorded by the writer; None when not recorded."""

    @property
    def dtype(self) -> np.dtype:
        return TOKEN_DTYPES[self.version]

    @property
    def file_size(self) -> int:
        return HEADER_BYTES + self.num_tokens * self.dtype.itemsize

    def to_array(self) -> np.ndarray:
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[0] = MAGIC
        header[1] = self.version
        header[2] = self.num_tokens
        if self.vocab_size is not None:
            header[3] = self.vocab_size
            header[4] = -1 if self.eot_id is None else self.eot_id
        return header


def parse_header(path: str | os.PathLike[str], raw: bytes, file_size: int) -> ShardHeader:
    """Validate ``raw`` (the first bytes of the file) against the format and the file size."""
    if file_size < HEADER_BYTES:
        raise ShardFormatError(
            path,
            f"truncated: the file holds {file_size} bytes, less than the {HEADER_BYTES}-byte header "
            "(an interrupted copy or download? fetch or write it again)",
        )
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise ShardFormatError(
            path,
            f"wrong magic number {magic} (expected {MAGIC}): this is not a token shard "
            "(write shards with `sb-data prepare`)",
        )
    if version not in TOKEN_DTYPES:
        raise ShardFormatError(
            path,
            f"unknown header version {version} (this sb-data reads version 1 = uint16 tokens and "
            "version 2 = uint32 tokens; upgrade sb-data if the file comes from a newer writer)",
        )
    if count < 0:
        raise ShardFormatError(path, f"negative token count {count} in the header: the header is corrupt")
    itemsize = TOKEN_DTYPES[version].itemsize
    expected = HEADER_BYTES + count * itemsize
    if file_size < expected:
        raise ShardFormatError(
            path,
            f"truncated: the header declares {count:,} tokens ({expected:,} bytes with the header) but the "
            f"file holds {file_size:,} bytes ({(file_size - HEADER_BYTES) // itemsize:,} tokens); "
            "it was cut short, so write or download it again",
        )
    if file_size > expected:
        raise ShardFormatError(
            path,
            f"token count {count:,} in the header disagrees with the file size: expected {expected:,} "
            f"bytes, found {file_size:,} ({file_size - expected:,} unexplained bytes); the header or "
            "the file is corrupt",
        )
    vocab_size: int | None = int(header[3]) or None
    eot_id: int | None = None
    if vocab_size is not None:
        if vocab_size < 0:
            raise ShardFormatError(path, f"negative vocabulary size {vocab_size} in the header (slot 3)")
        eot_id = int(header[4])
        if eot_id == -1:
            eot_id = None
        elif not 0 <= eot_id < vocab_size:
            raise ShardFormatError(
                path, f"end-of-text id {eot_id} (header slot 4) is outside the vocabulary 0..{vocab_size - 1}"
            )
    return ShardHeader(version=version, num_tokens=count, vocab_size=vocab_size, eot_id=eot_id)


def read_header(path: str | os.PathLike[str]) -> ShardHeader:
    """Read and validate a shard's header (and its size) without reading the tokens."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such shard file") from None
    return parse_header(path, raw, size)


def check_token_range(
    path: str | os.PathLike[str], tokens: np.ndarray, limit: int | None, who: str = "declared"
) -> None:
    """Raise if any id in ``tokens`` is >= ``limit`` (the vocabulary size)."""
    if limit is None or tokens.size == 0:
        return
    top = int(tokens.max())
    if top >= limit:
        where = int(np.argmax(tokens >= limit))
        raise ShardFormatError(
            path,
            f"token id {int(tokens[where])} at token {where:,} is >= the {who} vocabulary size {limit:,}: "
            "the file is corrupt or was written with another tokenizer",
        )


def read_tokens(
    path: str | os.PathLike[str],
    *,
    vocab_size: int | None = None,
    header: ShardHeader | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Read all tokens of a shard into memory, validating the header, the size and the id range.

    ``vocab_size`` is the caller's vocabulary; ids are checked against it and against the vocabulary the
    header declares, whichever is smaller. ``out`` may be a preallocated array of the right dtype/length.
    """
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
        found = parse_header(path, raw, size)
        if header is not None and found != header:
            raise ShardFormatError(path, f"the file changed while in use: header was {header}, now {found}")
        tokens = np.empty(found.num_tokens, dtype=found.dtype) if out is None else out
        if tokens.dtype != found.dtype or tokens.shape != (found.num_tokens,):
            raise ValueError(f"{path}: out must be {found.dtype} of shape ({found.num_tokens},)")
        nread = f.readinto(memoryview(tokens).cast("B"))
    if nread != tokens.nbytes:
        raise ShardFormatError(
            path, f"truncated while reading: got {nread:,} of {tokens.nbytes:,} token bytes"
        )
    limits = [(v, w) for v, w in ((vocab_size, "expected"), (found.vocab_size, "declared")) if v is not None]
    if limits:
        limit, who = min(limits)
        check_token_range(path, tokens, limit, who)
    if found.version == VERSION_UINT32:
        check_token_range(path, tokens, MAX_INT32 + 1, "int32-addressable")
    return tokens


def choose_version(max_token_id: int, vocab_size: int | None) -> int:
    """Version 1 (uint16) when every id fits, else version 2 (uint32)."""
    biggest = max(max_token_id, (vocab_size or 0) - 1)
    return VERSION_UINT16 if biggest <= np.iinfo(np.uint16).max else VERSION_UINT32


def write_shard(
    path: str | os.PathLike[str],
    tokens: np.ndarray,
    *,
    version: int | None = None,
    vocab_size: int | None = None,
    eot_id: int | None = None,
) -> ShardHeader:
    """Write ``tokens`` as one shard, atomically. ``version=None`` picks uint16 when the ids fit.

    ``vocab_size``/``eot_id`` are recorded in header slots 3/4 (readers of the speedrun ignore them).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be integers, got {tokens.dtype}")
    lo = int(tokens.min()) if tokens.size else 0
    hi = int(tokens.max()) if tokens.size else 0
    if lo < 0:
        raise ValueError(f"{path}: negative token id {lo}")
    if vocab_size is not None:
        if not 0 < vocab_size <= MAX_INT32:
            raise ValueError(f"{path}: vocab_size must be in 1..{MAX_INT32}, got {vocab_size}")
        if hi >= vocab_size:
            raise ValueError(f"{path}: token id {hi} is >= vocab_size {vocab_size}")
        if eot_id is not None and not 0 <= eot_id < vocab_size:
            raise ValueError(f"{path}: eot_id {eot_id} is outside the vocabulary 0..{vocab_size - 1}")
    elif eot_id is not None:
        raise ValueError(f"{path}: eot_id is recorded only together with vocab_size")
    if version is None:
        version = choose_version(hi, vocab_size)
    if version not in TOKEN_DTYPES:
        raise ValueError(f"{path}: unknown header version {version} (1 = uint16, 2 = uint32)")
    dtype = TOKEN_DTYPES[version]
    if hi > np.iinfo(dtype).max or (version == VERSION_UINT32 and hi > MAX_INT32):
        raise ValueError(f"{path}: token id {hi} does not fit header version {version}; use version 2")
    if tokens.size > MAX_INT32:
        raise ValueError(f"{path}: {tokens.size:,} tokens exceed the int32 count field; write smaller shards")
    header = ShardHeader(version=version, num_tokens=int(tokens.size), vocab_size=vocab_size, eot_id=eot_id)
    data = np.ascontiguousarray(tokens, dtype=dtype)
    with atomic_write(path) as f:
        f.write(header.to_array().tobytes())
        f.write(memoryview(data).cast("B"))
    return header
