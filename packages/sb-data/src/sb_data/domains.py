"""Domain labels of documents: the side file next to a shard, and per-token labels looked up from it.

A shard ``NAME.bin`` whose documents carry domain labels (e.g. ``prose``, ``code``) has a side file
``NAME.domains.json`` (docs/design/data.md, Domain side files)::

    {"format": "sb-data-domains/1", "shard": "NAME.bin", "tokens": N,
     "domains": ["code", "prose"], "runs": [[0, 1], [5234, 0], [9120, -1]]}

``runs`` lists where the label changes: from token offset ``start`` on (up to the next run) every token
belongs to ``domains[index]`` (``-1``: documents without a label). Each start but the first is a document
start, i.e. the offset of an end-of-text token; the first run starts at 0 and, when the shard opens in the
middle of a document, gives that document's label. So a token's label is the label of the document it is
in, and one ``searchsorted`` labels a whole batch. A shard without a side file has no labels; old shard sets
have none and keep working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sb_data.atomic import atomic_write

SIDE_FORMAT = "sb-data-domains/1"
SIDE_SUFFIX = ".domains.json"
MAX_DOMAIN_CHARS = 64
UNLABELLED = -1


class DomainLabelError(ValueError):
    """A domain label or a side file is wrong; the message names the file and how to fix it."""


def check_domain(value: object, where: str, field: str = "domain") -> str | None:
    """A document's domain label, checked: ``None`` (no label) or a non-empty printable string of at most
    64 characters. Anything else raises :class:`DomainLabelError` naming ``where``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DomainLabelError(
            f"{where}: field {field!r} holds {type(value).__name__}, not a string; give each document's "
            f"domain as a short name such as \"code\" (or leave the field out)"
        )
    if not value.strip():
        raise DomainLabelError(
            f"{where}: field {field!r} is empty; give a name such as \"code\" or leave the field out"
        )
    if len(value) > MAX_DOMAIN_CHARS:
        raise DomainLabelError(
            f"{where}: field {field!r} is {len(value)} characters long (at most {MAX_DOMAIN_CHARS}); "
            "a domain is a short name such as \"code\""
        )
    if not value.isprintable() or value != value.strip():
        raise DomainLabelError(
            f"{where}: field {field!r} = {value!r} has control characters or surrounding spaces; "
            "use a plain name such as \"code\""
        )
    return value


def side_file_path(shard: str | os.PathLike[str]) -> Path:
    """``data_val_000000.bin`` -> ``data_val_000000.domains.json`` (same folder)."""
    path = Path(shard)
    return path.with_name(path.name.removesuffix(".bin") + SIDE_SUFFIX)


class RunRecorder:
    """Collects one shard's label runs while documents are appended to it (used by the writer)."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, str | None]] = []

    def document(self, offset: int, domain: str | None) -> None:
        """A document (its end-of-text token) starts at ``offset`` of the shard being filled."""
        if self.runs and self.runs[-1][0] == offset:
            self.runs.pop()
        if not self.runs or self.runs[-1][1] != domain:
            self.runs.append((offset, domain))

    def labelled(self) -> bool:
        return any(domain is not None for _, domain in self.runs)

    def next_shard(self) -> None:
        """The shard was written: the next one opens in the last document (same label) at offset 0."""
        last = self.runs[-1][1] if self.runs else None
        self.runs = [(0, last)]


def write_side_file(
    shard: str | os.PathLike[str], num_tokens: int, runs: Sequence[tuple[int, str | None]]
) -> Path:
    """Write ``shard``'s side file atomically from its runs ``[(start, label or None), ...]``."""
    names = sorted({d for _, d in runs if d is not None})
    index = {name: i for i, name in enumerate(names)}
    record = {
        "format": SIDE_FORMAT,
        "shard": Path(shard).name,
        "tokens": int(num_tokens),
        "domains": names,
        "runs": [[int(start), index[d] if d is not None else UNLABELLED] for start, d in runs],
    }
    path = side_file_path(shard)
    with atomic_write(path) as f:
        f.write(json.dumps(record, separators=(",", ":")).encode())
    return path


@dataclass(frozen=True)
class ShardDomains:
    """One shard's label runs: ``starts`` (int64, increasing, first 0) and ``labels`` (int64 indices into
    ``names``, -1 = unlabelled)."""

    names: tuple[str, ...]
    starts: np.ndarray
    labels: np.ndarray

    def lookup(self, positions: np.ndarray) -> np.ndarray:
        """Label index of each token position (vectorised)."""
        return self.labels[np.searchsorted(self.starts, positions, side="right") - 1]


def read_side_file(shard: str | os.PathLike[str], num_tokens: int) -> ShardDomains | None:
    """``shard``'s labels, or None when it has no side file. A side file that does not belong to the shard
    (other name or token count) or is malformed raises :class:`DomainLabelError`."""
    path = side_file_path(shard)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DomainLabelError(f"{path}: not a readable domain side file ({exc}); {_REBUILD}") from None
    fix = f"it does not belong to {Path(shard).name}; {_REBUILD}"
    if not isinstance(record, dict) or record.get("format") != SIDE_FORMAT:
        raise DomainLabelError(
            f"{path}: not a domain side file of this sb-data (format {SIDE_FORMAT}); {_REBUILD}"
        )
    if record.get("shard") != Path(shard).name:
        raise DomainLabelError(f"{path}: written for shard {record.get('shard')!r}: {fix}")
    if record.get("tokens") != num_tokens:
        written = record.get("tokens")
        written = f"{written:,}" if isinstance(written, int) else repr(written)
        raise DomainLabelError(
            f"{path}: written for {written} tokens but the shard holds {num_tokens:,}: {fix}"
        )
    names, runs = record.get("domains"), record.get("runs")
    try:
        names = tuple(check_domain(n, str(path), "domains") for n in names)  # type: ignore[union-attr]
        table = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise DomainLabelError(f"{path}: malformed domains/runs ({exc}); {_REBUILD}") from None
    starts, labels = table[:, 0].copy(), table[:, 1].copy()
    bad = (
        starts.size == 0
        or starts[0] != 0
        or bool(np.any(np.diff(starts) <= 0))
        or int(starts[-1]) >= max(num_tokens, 1)
        or bool(np.any((labels < UNLABELLED) | (labels >= len(names))))
    )
    if bad:
        raise DomainLabelError(
            f"{path}: runs must start at 0, increase, stay below {num_tokens:,} tokens and name one of "
            f"{len(names)} domains; {_REBUILD}"
        )
    return ShardDomains(names, starts, labels)  # type: ignore[arg-type]


_REBUILD = (
    "rebuild the shards with `sb-data prepare ... --overwrite` (or delete the side file to drop the labels)"
)


class DomainTable:
    """Labels of a set of shards under one name table (the union of every side file's, sorted).

    ``lookup(file_index, tokens, positions)`` labels token positions of one shard; the first lookup of a
    shard checks that every run start is an end-of-text token of it (or a shard that does not match its
    side file would label the wrong tokens)."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], eot_id: int) -> None:
        self.paths = list(paths)
        self.eot_id = eot_id
        self._shards = [read_side_file(p, int(n)) for p, n in zip(paths, sizes, strict=True)]
        found = {n for s in self._shards if s is not None for n in s.names}
        self.names: tuple[str, ...] = tuple(sorted(found))
        index = {name: i for i, name in enumerate(self.names)}
        # per shard: local label index -> global index (position -1 maps the unlabelled runs)
        self._maps = [
            None if s is None else np.array([*(index[n] for n in s.names), UNLABELLED], dtype=np.int16)
            for s in self._shards
        ]
        self._checked: set[int] = set()

    @property
    def labelled(self) -> bool:
        return bool(self.names)

    def lookup(self, file_index: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """int16 global label of each position of shard ``file_index`` (-1 = unlabelled)."""
        shard = self._shards[file_index]
        if shard is None:
            return np.full(positions.shape, UNLABELLED, dtype=np.int16)
        if file_index not in self._checked:
            opened = shard.starts[1:]
            if opened.size and bool(np.any(tokens[opened] != self.eot_id)):
                first = int(opened[tokens[opened] != self.eot_id][0])
                path = self.paths[file_index]
                raise DomainLabelError(
                    f"{side_file_path(path)}: a label run starts at token {first:,}, which is not a document "
                    f"start (end-of-text id {self.eot_id}) of {path.name}: {_REBUILD}"
                )
            self._checked.add(file_index)
        return self._maps[file_index][shard.lookup(positions)]
