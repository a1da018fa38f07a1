"""Training text that is present wherever the project runs: the Python installation's own documentation.

``python-docs`` = the reference-manual topics that ship with every CPython (``pydoc_data.topics``, about
0.5 MB of English prose with code examples), labelled ``prose``, and the standard library's top-level ``.py``
sources (documented code), labelled ``code``, up to a byte budget shared by the two (docs/design/data.md,
built-in corpus). It is tokenized with the byte tokenizer (no BPE files needed), so the ``tiny`` and ``smoke``
presets train on a fresh machine with no download, and their validation data carry the two domain labels
that domains.csv measures (docs/log-format.md §5).
"""

from __future__ import annotations

import json
import random
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from sb_data import ValidationRule, prepare

PROSE, CODE = "prose", "code"
Doc = tuple[str, str]  # (text, domain)


def _prose() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield text


def _code() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            yield text


def _take(texts: Iterable[str], budget: float) -> tuple[list[str], int]:
    """Texts in order until ``budget`` bytes are reached (the one that crosses it included)."""
    taken, used = [], 0
    for text in texts:
        if used >= budget:
            break
        taken.append(text)
        used += len(text.encode("utf-8"))
    return taken, used


def python_docs_documents(max_bytes: int) -> list[Doc]:
    """The labelled documents in a fixed order (the same corpus on every machine with the same Python): the
    prose, then the code. Each domain gets half of ``max_bytes`` and what one leaves unused goes to the
    other, so a small budget still holds both."""
    prose, used_prose = _take(_prose(), max_bytes / 2)
    code, used_code = _take(_code(), max_bytes - used_prose)
    if used_code < max_bytes / 2:  # the code ran out: the prose may use the rest
        prose, _ = _take(_prose(), max_bytes - used_code)
    return [(t, PROSE) for t in prose] + [(t, CODE) for t in code]


def interleave_validation(docs: list[Doc], rule: ValidationRule) -> list[Doc]:
    """``docs`` with the documents that ``rule`` sends to validation reordered so that the validation
    stream's first tokens hold both domains: the shortest document of each domain first, then the rest
    alternating domains (each in its shuffled order). The training documents keep their places. If the
    validation share lacks a domain, its shortest training document trades places with a validation one."""
    out = list(docs)
    val_at = [i for i in range(len(out)) if rule.is_val(i)]
    for domain in (PROSE, CODE):
        if val_at and not any(out[i][1] == domain for i in val_at):
            candidates = [i for i in range(len(out)) if out[i][1] == domain]
            if candidates:
                j = min(candidates, key=lambda i: len(out[i][0]))
                out[j], out[val_at[-1]] = out[val_at[-1]], out[j]
    by_domain = {d: [out[i] for i in val_at if out[i][1] == d] for d in (PROSE, CODE)}
    ordered: list[Doc] = []
    for d in (PROSE, CODE):
        if by_domain[d]:
            shortest = min(by_domain[d], key=lambda doc: len(doc[0]))
            by_domain[d].remove(shortest)
            ordered.append(shortest)
    rest_prose, rest_code = by_domain[PROSE], by_domain[CODE]
    for k in range(max(len(rest_prose), len(rest_code))):
        ordered += rest_prose[k : k + 1] + rest_code[k : k + 1]
    for i, doc in zip(val_at, ordered, strict=True):
        out[i] = doc
    return out


PYTHON_DOCS_INPUT = "python-docs.jsonl"  # the input name sb-data's summary records for this corpus


def write_python_docs_shards(out_dir: str | Path, prefix: str, *, max_bytes: int = 6_000_000,
                             val_fraction: float = 0.05, seed: int = 0, overwrite: bool = False) -> Path:
    """Tokenize the corpus into ``{prefix}_train_*.bin`` / ``{prefix}_val_*.bin`` shards (and their domain
    side files) in ``out_dir`` (``overwrite`` replaces earlier ``{prefix}`` shards there).

    The documents are shuffled (fixed seed) before writing: the loader reads shards in order, and a stream
    of all the prose first and all the code after would make the training distribution drift. The validation
    documents are then interleaved by domain (:func:`interleave_validation`)."""
    out = Path(out_dir)
    docs = python_docs_documents(max_bytes)
    random.Random(seed).shuffle(docs)
    docs = interleave_validation(docs, ValidationRule(fraction=val_fraction, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / PYTHON_DOCS_INPUT
        with src.open("w", encoding="utf-8") as f:
            for text, domain in docs:
                f.write(json.dumps({"text": text, "domain": domain}) + "\n")
        prepare([src], out, tokenizer="bytes", val_fraction=val_fraction, prefix=prefix, progress=False,
                workers=1, overwrite=overwrite)
    return out
