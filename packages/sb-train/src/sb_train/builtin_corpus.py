"""Training text that is present wherever the project runs: the Python installation's own documentation.

``python-docs`` = the reference-manual topics that ship with every CPython (``pydoc_data.topics``, about
0.75 MB of English prose with code examples) followed by the standard library's top-level ``.py`` sources
(documented code), up to a byte budget. It is tokenized with the byte tokenizer (no BPE files needed), so the
``tiny`` and ``smoke`` presets train on a fresh machine with no download.
"""

from __future__ import annotations

import json
import random
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sb_data import prepare


def python_docs_documents(max_bytes: int) -> Iterator[str]:
    """The documents, in a fixed order (the same corpus on every machine with the same Python)."""
    from pydoc_data.topics import topics

    used = 0
    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            used += len(text.encode("utf-8"))
            yield text
            if used >= max_bytes:
                return
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        used += len(text.encode("utf-8"))
        yield text
        if used >= max_bytes:
            return


PYTHON_DOCS_INPUT = "python-docs.jsonl"  # the input name sb-data's summary records for this corpus


def write_python_docs_shards(out_dir: str | Path, prefix: str, *, max_bytes: int = 6_000_000,
                             val_fraction: float = 0.05, seed: int = 0, overwrite: bool = False) -> Path:
    """Tokenize the corpus into ``{prefix}_train_*.bin`` / ``{prefix}_val_*.bin`` shards in ``out_dir``
    (``overwrite`` replaces earlier ``{prefix}`` shards there).

    The documents are shuffled (fixed seed) before writing: the loader reads shards in order, and a stream
    of all the prose first and all the code after would make the training distribution drift."""
    out = Path(out_dir)
    docs = list(python_docs_documents(max_bytes))
    random.Random(seed).shuffle(docs)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / PYTHON_DOCS_INPUT
        with src.open("w", encoding="utf-8") as f:
            for text in docs:
                f.write(json.dumps({"text": text}) + "\n")
        prepare([src], out, tokenizer="bytes", val_fraction=val_fraction, prefix=prefix, progress=False,
                workers=1, overwrite=overwrite)
    return out
