"""``sb-data inspect``: what a shard holds (header, counts, id range, documents, first tokens decoded)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sb_data.format import HEADER_BYTES, read_header, read_tokens
from sb_data.shards import DEFAULT_EOT
from sb_data.tokenizers import Tokenizer, TokenizerUnavailableError, get_tokenizer, tokenizer_for_header

EOT_TEXT = "<|endoftext|>"


@dataclass
class ShardReport:
    path: str
    version: int
    token_dtype: str
    num_tokens: int
    file_bytes: int
    vocab_size: int | None
    eot_id: int
    min_id: int | None
    max_id: int | None
    documents: int
    first_ids: list[int]
    first_text: str | None
    note: str | None = None

    def format(self) -> str:
        vocab = (
            f"{self.vocab_size:,} (recorded in the header)"
            if self.vocab_size is not None
            else "not recorded (speedrun-style header)"
        )
        ids = "none" if self.min_id is None else f"min {self.min_id:,}, max {self.max_id:,}"
        lines = [
            self.path,
            f"  header:     version {self.version} ({self.token_dtype} tokens), {HEADER_BYTES} bytes",
            f"  tokens:     {self.num_tokens:,} ({self.file_bytes:,} bytes on disk)",
            f"  vocabulary: {vocab}",
            f"  ids:        {ids}",
            f"  documents:  {self.documents:,} (tokens equal to end-of-text id {self.eot_id})",
            f"  first {len(self.first_ids)}:   {self.first_ids}",
        ]
        if self.first_text is not None:
            lines.append(f"  decoded:    {self.first_text!r}")
        if self.note:
            lines.append(f"  note:       {self.note}")
        return "\n".join(lines)


def decode_with_separators(tokenizer: Tokenizer, ids: np.ndarray) -> str:
    """Decode ``ids``, writing each end-of-text token as ``<|endoftext|>``."""
    cuts = np.flatnonzero(ids == tokenizer.eot_id)
    pieces = np.split(ids, cuts)
    out = [tokenizer.decode(pieces[0])]
    for piece in pieces[1:]:
        out.append(EOT_TEXT + tokenizer.decode(piece[1:]))
    return "".join(out)


def inspect_shard(
    path: str | os.PathLike[str],
    *,
    first: int = 32,
    tokenizer: str | Tokenizer | None = "auto",
    bpe_dir: str | os.PathLike[str] | None = None,
) -> ShardReport:
    """Read and fully validate one shard and describe it. ``tokenizer=None`` skips decoding."""
    header = read_header(path)
    tokens = read_tokens(path, header=header)
    eot = header.eot_id if header.eot_id is not None else DEFAULT_EOT
    if header.vocab_size == 256 and header.eot_id is None:
        eot = 0
    head = tokens[:first]
    report = ShardReport(
        path=str(path),
        version=header.version,
        token_dtype=str(header.dtype.newbyteorder("=")),
        num_tokens=header.num_tokens,
        file_bytes=Path(path).stat().st_size,
        vocab_size=header.vocab_size,
        eot_id=eot,
        min_id=int(tokens.min()) if tokens.size else None,
        max_id=int(tokens.max()) if tokens.size else None,
        documents=int(np.count_nonzero(tokens == eot)),
        first_ids=[int(t) for t in head],
        first_text=None,
    )
    if tokenizer is None:
        return report
    try:
        if tokenizer == "auto":
            tok = tokenizer_for_header(header.vocab_size, bpe_dir=bpe_dir)
        elif isinstance(tokenizer, str):
            tok = get_tokenizer(tokenizer, bpe_dir=bpe_dir)
        else:
            tok = tokenizer
    except TokenizerUnavailableError as exc:
        report.note = f"not decoded: {exc}"
        return report
    if report.max_id is not None and int(head.max(initial=0)) >= tok.vocab_size:
        report.note = f"not decoded: ids exceed the {tok.name} vocabulary ({tok.vocab_size:,})"
        return report
    report.first_text = decode_with_separators(tok, head)
    return report


def report_dict(report: ShardReport) -> dict:
    return asdict(report)
