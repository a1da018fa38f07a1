"""The writer behind ``sb-data prepare``: documents -> tokens -> fixed-size shards, train and validation.

Each document becomes ``[eot] + ids`` (the end-of-text token also opens the stream), exactly like the
speedrun's FineWeb shards. Documents are assigned to the validation or the training split as whole
documents, in input order, by a rule that depends only on the document's index (never on timing), so a
run is reproducible whatever the number of workers. Shards hold exactly ``shard_size`` tokens except the
last of each split; a document may continue from one shard into the next, as in the speedrun's shards.
Every shard is written atomically, and the summary file is written last, so an interrupted or failed run
(a full disk, say) never leaves a half shard that looks whole, and a finished run is recognisable by its
summary. The prefix and the output folder are checked before any input is read (:mod:`sb_data.output_checks`).
A shard holding documents with a domain label gets a side file of document -> domain, written just before
the shard (:mod:`sb_data.domains`).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sb_data.atomic import atomic_write
from sb_data.domains import SIDE_SUFFIX, RunRecorder, write_side_file
from sb_data.format import TOKEN_DTYPES, choose_version, write_shard
from sb_data.output_checks import PrepareOptionError, check_output_folder, check_prefix, probe_writable
from sb_data.sources import Document, DocumentSourceError, expand_inputs, read_documents, total_input_bytes
from sb_data.tokenizers import DocumentEncodingError, Tokenizer, get_tokenizer

SPLITS = ("val", "train")
_MASK64 = (1 << 64) - 1


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits where visible)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}_{split}_{index:06d}.bin"


def summary_name(prefix: str) -> str:
    return f"{prefix}_summary.json"


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class ValidationRule:
    """Which documents go to validation: the first ``docs`` documents, or a ``fraction`` chosen by hash."""

    fraction: float = 0.0
    docs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.docs is not None and self.docs < 0:
            raise ValueError(f"val docs must be >= 0, got {self.docs}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"val fraction must be in [0, 1), got {self.fraction}")

    def is_val(self, doc_index: int) -> bool:
        if self.docs is not None:
            return doc_index < self.docs
        if self.fraction == 0.0:
            return False
        return _mix64((self.seed << 40) ^ doc_index) < self.fraction * 2.0**64


class SplitShardWriter:
    """Packs documents of one split into shards of exactly ``shard_size`` tokens (the last may be short)."""

    def __init__(
        self,
        out_dir: Path,
        prefix: str,
        split: str,
        shard_size: int,
        *,
        version: int,
        vocab_size: int,
        eot_id: int,
    ) -> None:
        self.out_dir, self.prefix, self.split = out_dir, prefix, split
        self.version, self.vocab_size, self.eot_id = version, vocab_size, eot_id
        self.buffer = np.empty(shard_size, dtype=TOKEN_DTYPES[version])
        self.fill = 0
        self.paths: list[Path] = []
        self.documents = 0
        self.tokens = 0
        self.runs = RunRecorder()
        self.domain_tokens: dict[str, int] = {}

    def _append(self, ids: np.ndarray) -> None:
        start = 0
        while start < ids.size:
            take = min(self.buffer.size - self.fill, ids.size - start)
            self.buffer[self.fill : self.fill + take] = ids[start : start + take]
            self.fill += take
            start += take
            if self.fill == self.buffer.size:
                self.flush()

    def add_document(self, ids: np.ndarray, domain: str | None = None) -> None:
        self.runs.document(self.fill, domain)
        if domain is not None:
            self.domain_tokens[domain] = self.domain_tokens.get(domain, 0) + ids.size + 1
        self._append(np.array([self.eot_id], dtype=self.buffer.dtype))
        self._append(ids)
        self.documents += 1
        self.tokens += ids.size + 1

    def flush(self) -> None:
        if self.fill == 0:
            return
        path = self.out_dir / shard_name(self.prefix, self.split, len(self.paths))
        if self.runs.labelled():  # the side file first: a shard on disk never lacks the labels it has
            write_side_file(path, self.fill, self.runs.runs)
        self.runs.next_shard()
        write_shard(
            path,
            self.buffer[: self.fill],
            version=self.version,
            vocab_size=self.vocab_size,
            eot_id=self.eot_id,
        )
        self.paths.append(path)
        self.fill = 0


@dataclass
class PrepareSummary:
    tokenizer: str
    vocab_size: int
    eot_id: int
    header_version: int
    shard_size: int
    inputs: list[str]
    documents: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    domain_tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per split, tokens of each domain label (documents without a label are not counted)."""
    empty_documents_skipped: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return sum(self.tokens.values()) / max(self.seconds, 1e-9)

    def format(self) -> str:
        docs = sum(self.documents.values())
        toks = sum(self.tokens.values())
        lines = [
            f"documents: {docs:,} (train {self.documents['train']:,}, val {self.documents['val']:,}; "
            f"{self.empty_documents_skipped:,} empty skipped)",
            f"tokens:    {toks:,} (train {self.tokens['train']:,}, val {self.tokens['val']:,}; "
            f"tokenizer {self.tokenizer}, vocab {self.vocab_size:,}, header v{self.header_version})",
            f"shards:    train {len(self.shards['train'])}, val {len(self.shards['val'])} "
            f"(up to {self.shard_size:,} tokens each)",
            f"time:      {self.seconds:.1f} s, {self.tokens_per_second:,.0f} tokens/s",
        ]
        for split, counts in self.domain_tokens.items():
            if counts:
                named = ", ".join(f"{d} {n:,}" for d, n in sorted(counts.items()))
                lines.append(f"domains:   {split}: {named}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _chunks(
    docs: Iterable[Document], max_docs: int = 256, max_chars: int = 1 << 20
) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text)
        if len(chunk) >= max_docs or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _encode_chunk(tokenizer: Tokenizer, chunk: list[Document]) -> list[np.ndarray]:
    out = []
    for doc in chunk:
        try:
            out.append(tokenizer.encode(doc.text))
        except DocumentEncodingError as exc:
            raise DocumentEncodingError(f"{doc.location}: {exc}") from None
    return out


def _existing_outputs(out_dir: Path, prefix: str) -> list[Path]:
    patterns = [f"{prefix}_{split}_*{ext}" for split in SPLITS for ext in (".bin", SIDE_SUFFIX)]
    found = [p for pattern in patterns for p in out_dir.glob(pattern)]
    summary = out_dir / summary_name(prefix)
    return sorted(found) + ([summary] if summary.exists() else [])


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: str | Tokenizer = "gpt2",
    bpe_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 100_000_000,
    val_fraction: float = 0.01,
    val_docs: int | None = None,
    seed: int = 0,
    text_field: str = "text",
    domain_field: str = "domain",
    prefix: str = "data",
    workers: int | None = None,
    header_version: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareSummary:
    """Tokenize ``inputs`` into ``{prefix}_{train,val}_NNNNNN.bin`` shards in ``out_dir``.

    ``val_docs`` (when given, it wins over ``val_fraction``) sends the first N documents to validation,
    like the speedrun's first shard; otherwise a ``val_fraction`` of documents, chosen by a seeded hash
    of their index, goes there. A JSON Lines record's ``domain_field`` (optional) labels its document
    (docs/design/data.md, Domain side files).
    ``workers`` threads encode in parallel (default: every core). ``progress=None`` shows the bar on
    a terminal only. A refused ``prefix``, ``out_dir``, ``shard_size`` or header version raises
    :class:`PrepareOptionError` before anything is read or written.
    """
    start = time.perf_counter()
    if shard_size < 1:
        raise PrepareOptionError(f"--shard-size must be >= 1, got {shard_size}")
    check_prefix(prefix)
    out = Path(out_dir)
    check_output_folder(out)
    rule = ValidationRule(fraction=val_fraction, docs=val_docs, seed=seed)
    # Never read our own output back as input (e.g. `prepare corpus/ -o corpus/shards`).
    files = [p for p in expand_inputs(inputs) if not p.resolve().is_relative_to(out.resolve())]
    if not files:
        raise DocumentSourceError(f"every input lies inside the output folder {out}")
    tok = get_tokenizer(tokenizer, bpe_dir=bpe_dir) if isinstance(tokenizer, str) else tokenizer
    version = header_version or choose_version(tok.vocab_size - 1, tok.vocab_size)
    if version not in TOKEN_DTYPES:
        raise PrepareOptionError(f"unknown --header-version {version} (1 = uint16, 2 = uint32)")
    if version == 1 and tok.vocab_size > 65536:
        raise PrepareOptionError(
            f"vocabulary {tok.vocab_size:,} does not fit uint16 tokens; use --header-version 2"
        )
    out.mkdir(parents=True, exist_ok=True)
    probe_writable(out)
    existing = _existing_outputs(out, prefix)
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds {len(existing)} output file(s) with prefix {prefix!r} "
                f"(e.g. {existing[0].name}); pass --overwrite to replace them, or choose another "
                "--prefix or output folder"
            )
        for path in existing:
            path.unlink()
    writers = {
        split: SplitShardWriter(
            out, prefix, split, shard_size, version=version, vocab_size=tok.vocab_size, eot_id=tok.eot_id
        )
        for split in SPLITS
    }
    summary = PrepareSummary(
        tokenizer=tok.name,
        vocab_size=tok.vocab_size,
        eot_id=tok.eot_id,
        header_version=version,
        shard_size=shard_size,
        inputs=[str(p) for p in files],
    )
    try:
        _tokenize_into(
            writers, summary, files, tok, rule, workers=workers, text_field=text_field,
            domain_field=domain_field, progress=progress,
        )
        _finish(summary, writers, rule, out, prefix, start)
    except Exception as exc:
        finished = [p.name for w in writers.values() for p in w.paths]
        if finished:
            exc.add_note(
                f"the {len(finished)} shard(s) finished before this error are whole, but no summary was "
                f"written, so the set is incomplete; fix the problem and run again with --overwrite"
            )
        raise
    return summary


def _tokenize_into(
    writers: dict[str, SplitShardWriter],
    summary: PrepareSummary,
    files: list[Path],
    tok: Tokenizer,
    rule: ValidationRule,
    *,
    workers: int | None,
    text_field: str,
    domain_field: str,
    progress: bool | None,
) -> None:
    """Encode every document of ``files`` on a thread pool and hand the ids, in input order, to the
    split's writer; the last, short shard of each split is flushed too."""
    n_workers = max(1, workers or available_cores())
    fields = {"text_field": text_field, "domain_field": domain_field}
    documents = (doc for path in files for doc in read_documents(path, **fields))
    bar = tqdm(
        total=total_input_bytes(files),
        unit="B",
        unit_scale=True,
        desc="sb-data prepare",
        disable=None if progress is None else not progress,
    )
    doc_index = 0
    with ThreadPoolExecutor(n_workers, thread_name_prefix="sb-data-encode") as pool, bar:
        pending: deque[tuple[list[Document], Future[list[np.ndarray]]]] = deque()

        def drain_one() -> None:
            nonlocal doc_index
            chunk, fut = pending.popleft()
            for doc, ids in zip(chunk, fut.result(), strict=True):
                if not doc.text:
                    summary.empty_documents_skipped += 1
                else:
                    split = "val" if rule.is_val(doc_index) else "train"
                    writers[split].add_document(ids, doc.domain)
                    doc_index += 1
                bar.update(doc.input_bytes)
            bar.set_postfix(tokens=f"{writers['train'].tokens + writers['val'].tokens:,}", refresh=False)

        try:
            for chunk in _chunks(documents):
                pending.append((chunk, pool.submit(_encode_chunk, tok, chunk)))
                if len(pending) >= 2 * n_workers:
                    drain_one()
            while pending:
                drain_one()
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise
    for writer in writers.values():
        writer.flush()


def _finish(
    summary: PrepareSummary,
    writers: dict[str, SplitShardWriter],
    rule: ValidationRule,
    out: Path,
    prefix: str,
    start: float,
) -> None:
    """Fill in the summary's counts and warnings, and write it (atomically, last of all files)."""
    summary.seconds = time.perf_counter() - start
    for split, writer in writers.items():
        summary.documents[split] = writer.documents
        summary.tokens[split] = writer.tokens
        summary.shards[split] = [str(p) for p in writer.paths]
        summary.domain_tokens[split] = dict(sorted(writer.domain_tokens.items()))
    wants_val = rule.docs > 0 if rule.docs is not None else rule.fraction > 0
    if summary.documents["val"] == 0 and wants_val:
        summary.warnings.append("no document went to validation; raise --val-fraction or use --val-docs")
    if summary.documents["train"] == 0:
        summary.warnings.append("no document went to training; lower --val-fraction/--val-docs or add input")
    record = asdict(summary) | {"tokens_per_second": summary.tokens_per_second}
    with atomic_write(out / summary_name(prefix)) as f:
        f.write(json.dumps(record, indent=2).encode())
