"""Helpers shared by the sb-data tests: real text that ships with the machine, and shard builders."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from sb_data.format import write_shard

BPE_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "gpt2-bpe"
if not BPE_DIR.is_dir():  # the checkout may sit elsewhere; the shared data folder does not move
    BPE_DIR = Path("/work/shared/data/gpt2-bpe")


def real_text_files(limit: int = 12) -> list[Path]:
    """Real, human-written text files present on every machine of this project.

    Debian's licence texts when present, else modules of Python's own standard library.
    """
    licences = Path("/usr/share/common-licenses")
    files: list[Path] = []
    seen: set[Path] = set()
    if licences.is_dir():
        for p in sorted(licences.iterdir()):
            if p.is_file() and p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    if len(files) < 4:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = [stdlib / n for n in ("textwrap.py", "difflib.py", "heapq.py", "bisect.py", "fractions.py")]
    return files[:limit]


def real_texts(limit: int = 12) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in real_text_files(limit)]


def write_stream_shards(folder: Path, sizes: list[int], *, start: int = 0, version: int = 2) -> list[Path]:
    """Shards whose tokens are their own global stream positions (start, start+1, ...): every
    input then tells exactly where in the stream it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    pos = start
    for i, n in enumerate(sizes):
        path = folder / f"pos_{i:06d}.bin"
        write_shard(path, np.arange(pos, pos + n, dtype=np.uint32), version=version)
        paths.append(path)
        pos += n
    return paths


def write_document_shards(
    folder: Path,
    doc_lengths: list[list[int]],
    *,
    eot: int = 0,
    vocab_size: int = 1 << 20,
    lead: list[int] | None = None,
) -> tuple[list[Path], list[np.ndarray]]:
    """Shards made of documents ``[eot, id, id, ...]`` whose non-eot ids are unique across all shards.

    ``doc_lengths[i]`` lists the document lengths (eot included) of shard i; ``lead[i]`` optional
    non-document tokens at the start of shard i (a document continued from the previous shard).
    """
    folder.mkdir(parents=True, exist_ok=True)
    next_id = eot + 1
    paths, arrays = [], []
    for i, lengths in enumerate(doc_lengths):
        parts = []
        n_lead = lead[i] if lead else 0
        if n_lead:
            parts.append(np.arange(next_id, next_id + n_lead))
            next_id += n_lead
        for length in lengths:
            parts.append(np.array([eot]))
            parts.append(np.arange(next_id, next_id + length - 1))
            next_id += length - 1
        tokens = np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, np.uint32)
        path = folder / f"docs_{i:06d}.bin"
        write_shard(path, tokens, version=2, vocab_size=vocab_size, eot_id=eot)
        paths.append(path)
        arrays.append(tokens)
    return paths, arrays


def gloo_loader_worker(rank: int, world_size: int, store: str, files: list[str], out: str) -> None:
    """One rank of the 2-process gloo test: rank and world size come from torch.distributed."""
    import json

    import torch.distributed as dist

    from sb_data.loader import DistributedTokenLoader

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        loader = DistributedTokenLoader(files, 5)
        mine = [next(loader)[0].tolist() for _ in range(4)]
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, {"rank": loader.rank, "world": loader.world_size, "inputs": mine})
        if rank == 0:
            with open(out, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()
