"""``sb-data download``: fetch the public pre-tokenised FineWeb GPT-2 shards over plain HTTP(S).

Files come from the same Hugging Face dataset repository that the speedrun's
``data/cached_fineweb10B.py`` reads (``kjj0/fineweb10B-gpt2``): ``fineweb_val_000000.bin`` and
``fineweb_train_000001.bin`` onward. A complete, valid file is skipped. A transfer goes to ``NAME.part``
and resumes with an HTTP range request after an interruption (in the same run, up to ``retries`` times,
or in a later run); the file gets its final name only after its header and size check out.
"""

from __future__ import annotations

import errno
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sb_data._version import __version__
from sb_data.atomic import fsync_directory
from sb_data.format import HEADER_BYTES, ShardFormatError, parse_header, read_header

BASE_URL_ENV = "SB_DATA_BASE_URL"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    repo: str
    prefix: str
    max_train_shards: int


DATASETS = {"fineweb10B": DatasetSpec(repo="kjj0/fineweb10B-gpt2", prefix="fineweb", max_train_shards=103)}


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says what to do."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    status: str
    """``skipped`` (already complete), ``downloaded`` or ``resumed`` (continued a partial file)."""
    bytes_fetched: int


def dataset_files(name: str, train_shards: int, *, include_val: bool = True) -> list[str]:
    spec = _spec(name)
    if not 0 <= train_shards <= spec.max_train_shards:
        raise ValueError(
            f"{name} has {spec.max_train_shards} training shards; --shards must be 0..{spec.max_train_shards}"
        )
    names = [f"{spec.prefix}_val_{0:06d}.bin"] if include_val else []
    return names + [f"{spec.prefix}_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_base_url(name: str) -> str:
    """``$SB_DATA_BASE_URL``, else the dataset's folder on ``$HF_ENDPOINT`` (default huggingface.co)."""
    if os.environ.get(BASE_URL_ENV):
        return os.environ[BASE_URL_ENV]
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    return f"{endpoint.rstrip('/')}/datasets/{_spec(name).repo}/resolve/main"


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": f"sb-data/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool | None) -> tuple[int, bool]:
    """Append the rest of ``url`` to ``part``. Returns (bytes written, whether it continued a partial)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, have), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file may already be whole
            return 0, True
        raise
    with response:
        resumed = bool(have) and response.status == 206
        if resumed:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise DownloadError(
                    f"{url}: server answered range {content_range!r} to a request from byte {have}"
                )
        else:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        written = 0
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=None if expected is None else have + expected,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=None if progress is None else not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and written != expected:
        raise http.client.IncompleteRead(b"", expected - written)
    return written, resumed


# Errors of the local file system, as opposed to the network: retrying the transfer cannot fix them.
LOCAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}
)


def _local_file_error(exc: Exception) -> bool:
    return (
        isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError) and exc.errno in LOCAL_ERRNOS
    )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool | None = None,
) -> DownloadResult:
    """Fetch one shard to ``dest``: skip it if complete, else (re)start or resume ``dest.part``."""
    dest = Path(dest)
    if dest.exists():
        try:
            read_header(dest)
        except ShardFormatError as exc:
            raise DownloadError(
                f"{dest} already exists but is not a complete shard ({exc.problem}); "
                "delete it to fetch it again"
            ) from None
        return DownloadResult(dest, "skipped", 0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fetched = 0
    resumed_any = False
    attempt = 0
    while True:
        try:
            written, resumed = _fetch_into(url, part, timeout=timeout, progress=progress)
            fetched += written
            resumed_any |= resumed
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise DownloadError(
                    f"{url}: HTTP {exc.code} {exc.reason}; check the base URL / dataset name"
                ) from None
            problem: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as exc:
            if _local_file_error(exc):
                raise  # a full, read-only or forbidden disk: retrying cannot help (the .part file is kept)
            problem = exc
        attempt += 1
        if attempt > retries:
            raise DownloadError(
                f"{url}: download failed after {attempt} attempt(s) ({type(problem).__name__}: {problem}); "
                f"the partial file {part} is kept: run the same command again to resume"
            ) from problem
        resumed_any = True
        time.sleep(backoff * attempt)
    size = part.stat().st_size
    with open(part, "rb") as f:
        raw = f.read(HEADER_BYTES)
    try:
        parse_header(part, raw, size)
    except ShardFormatError as exc:
        part.unlink()
        raise DownloadError(
            f"{url}: the downloaded file is not a valid shard ({exc.problem}); "
            "it was deleted, run again to retry"
        ) from None
    os.replace(part, dest)
    fsync_directory(dest.parent)
    return DownloadResult(dest, "resumed" if resumed_any else "downloaded", fetched)


def download(
    name: str,
    train_shards: int,
    out_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    include_val: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> list[DownloadResult]:
    """Fetch the validation shard and the first ``train_shards`` training shards of dataset ``name``."""
    base = (base_url or default_base_url(name)).rstrip("/")
    results = []
    for filename in dataset_files(name, train_shards, include_val=include_val):
        results.append(
            download_file(
                f"{base}/{filename}",
                Path(out_dir) / filename,
                retries=retries,
                timeout=timeout,
                progress=progress,
            )
        )
    return results
