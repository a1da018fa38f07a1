import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sbdata_helpers import BPE_DIR, real_text_files

from sb_data.cli import main
from sb_data.download import DownloadError, dataset_files, default_base_url, download
from sb_data.format import read_tokens
from sb_data.prepare import prepare

REPO_PATH = "/datasets/kjj0/fineweb10B-gpt2/resolve/main/"


class ShardServer:
    """A local HTTP file server with byte-range support that can cut transfers short on purpose."""

    def __init__(self, root):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}  # file name -> how many more GETs to cut half-way
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.removeprefix(REPO_PATH)
                server.requests.append((name, self.headers.get("Range")))
                path = server.root / name
                if not self.path.startswith(REPO_PATH) or not path.is_file():
                    self.send_error(404, "Entry not found")
                    return
                data = path.read_bytes()
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut.get(name, 0) > 0:
                    server.cut[name] -= 1
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{REPO_PATH.rstrip('/')}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Real shards (GPT-2 tokens of real text) under the public names, served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("remote")
    summary = prepare(
        [str(p) for p in real_text_files(6)],
        root / "work",
        bpe_dir=BPE_DIR,
        shard_size=6_000,
        val_docs=1,
        progress=False,
    )
    assert len(summary.shards["train"]) >= 2
    shutil.copy(summary.shards["val"][0], root / "fineweb_val_000000.bin")
    for i, path in enumerate(summary.shards["train"][:2], start=1):
        shutil.copy(path, root / f"fineweb_train_{i:06d}.bin")
    server = ShardServer(root)
    yield server
    server.close()


def fetched(remote, out, names):
    for name in names:
        assert (out / name).read_bytes() == (remote.root / name).read_bytes()
        read_tokens(out / name)
    assert not list(out.glob("*.part"))


def test_download_then_skip(remote, tmp_path):
    names = dataset_files("fineweb10B", 2)
    assert names == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    remote.requests.clear()
    results = download("fineweb10B", 2, tmp_path, base_url=remote.url, progress=False)
    assert [r.status for r in results] == ["downloaded"] * 3
    fetched(remote, tmp_path, names)
    assert [r[0] for r in remote.requests] == names
    remote.requests.clear()
    again = download("fineweb10B", 2, tmp_path, base_url=remote.url, progress=False)
    assert [r.status for r in again] == ["skipped"] * 3
    assert remote.requests == []  # complete files are not even asked for


def test_partial_file_is_resumed_with_a_range_request(remote, tmp_path):
    name = "fineweb_train_000002.bin"
    (tmp_path / f"{name}.part").write_bytes((remote.root / name).read_bytes()[:1000])
    remote.requests.clear()
    results = download("fineweb10B", 2, tmp_path, base_url=remote.url, include_val=False, progress=False)
    assert [r.status for r in results] == ["downloaded", "resumed"]
    assert results[1].bytes_fetched == (remote.root / name).stat().st_size - 1000
    assert (name, "bytes=1000-") in remote.requests
    fetched(remote, tmp_path, [name])


def test_cut_transfer_resumes_within_the_run(remote, tmp_path):
    name = "fineweb_train_000001.bin"
    remote.cut[name] = 1
    remote.requests.clear()
    results = download("fineweb10B", 1, tmp_path, base_url=remote.url, include_val=False, progress=False)
    assert results[0].status == "resumed"
    ranges = [r for n, r in remote.requests if n == name]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    fetched(remote, tmp_path, [name])


def test_cut_transfer_without_retries_keeps_the_partial_file(remote, tmp_path, capsys):
    name = "fineweb_train_000001.bin"
    remote.cut[name] = 1
    with pytest.raises(DownloadError, match=r"partial file .*\.part is kept: run the same command again"):
        download("fineweb10B", 1, tmp_path, base_url=remote.url, include_val=False, retries=0, progress=False)
    assert not (tmp_path / name).exists()
    assert (tmp_path / f"{name}.part").stat().st_size > 0
    code = main(["download", "fineweb10B", str(tmp_path), "--shards", "1", "--no-val",
                 "--base-url", remote.url, "--no-progress"])  # fmt: skip
    assert code == 0
    assert "resumed" in capsys.readouterr().out
    fetched(remote, tmp_path, [name])


def test_download_errors(remote, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("fineweb10B", 3, tmp_path, base_url=remote.url, retries=0, progress=False)
    bad = tmp_path / "x" / "fineweb_val_000000.bin"
    bad.parent.mkdir()
    bad.write_bytes(b"not a shard" * 200)
    with pytest.raises(DownloadError, match=r"not a complete shard .*wrong magic.*delete it"):
        download("fineweb10B", 0, bad.parent, base_url=remote.url, progress=False)
    with pytest.raises(ValueError, match=r"--shards must be 0..103"):
        dataset_files("fineweb10B", 104)
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_files("fineweb1T", 1)


def test_base_url_configuration(monkeypatch):
    monkeypatch.delenv("SB_DATA_BASE_URL", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert (
        default_base_url("fineweb10B") == "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main"
    )
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert (
        default_base_url("fineweb10B") == "https://mirror.example/datasets/kjj0/fineweb10B-gpt2/resolve/main"
    )
    monkeypatch.setenv("SB_DATA_BASE_URL", "http://127.0.0.1:9/files")
    assert default_base_url("fineweb10B") == "http://127.0.0.1:9/files"


def test_a_full_disk_is_reported_at_once_not_retried(remote, tmp_path, capsys, monkeypatch):
    import errno
    import importlib

    module = importlib.import_module("sb_data.download")  # the package's `download` names the function

    def full_disk(path, mode="r", *args, **kwargs):
        if "r" not in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", full_disk, raising=False)
    monkeypatch.setattr(module.time, "sleep", lambda s: pytest.fail("retried a local disk error"))
    remote.requests.clear()
    code = main(["download", "fineweb10B", str(tmp_path), "--shards", "0", "--base-url", remote.url,
                 "--retries", "3", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    part = tmp_path / "fineweb_val_000000.bin.part"
    assert f"sb-data: error: {part}: no space left on the device; free some space" in err
    assert len(remote.requests) == 1 and not (tmp_path / "fineweb_val_000000.bin").exists()
