"""Safe serving: the app started the documented ways listens on loopback only and refuses requests whose
Host (DNS rebinding) or Origin (cross-site WebSocket) is foreign; the options files match serving.py."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from router_explorer.serving import SAFE_OPTIONS, request_allowed

APP_DIR = Path(__file__).resolve().parents[1]
REPO = APP_DIR.parents[1]
CONFIG_FILES = [APP_DIR / ".streamlit" / "config.toml",
                APP_DIR / "src" / "router_explorer" / ".streamlit" / "config.toml"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=["streamlit-run", "router-explorer"])
def test_config_files_hold_the_safe_options(path):
    parsed = tomllib.loads(path.read_text())
    flat = {f"{section}.{key}": value for section, values in parsed.items() for key, value in values.items()}
    assert flat == SAFE_OPTIONS


def test_host_and_origin_rules():
    hosts = ["localhost", "127.0.0.1", "::1", "*.example.org"]
    assert request_allowed({"host": "localhost:8501"}, hosts)
    assert request_allowed({"host": "[::1]:8501"}, hosts)
    assert request_allowed({"host": "app.example.org", "origin": "https://app.example.org"}, hosts)
    assert request_allowed({"host": "127.0.0.1:8501", "origin": "http://localhost:8501"}, hosts)
    assert not request_allowed({"host": "attacker.test:8501"}, hosts)  # DNS rebinding
    assert not request_allowed({}, hosts)
    assert not request_allowed({"host": "localhost:8501", "origin": "http://attacker.test"}, hosts)
    assert not request_allowed({"host": "user@localhost"}, hosts)
    assert not request_allowed({"host": "localhost:99999"}, hosts)
    assert not request_allowed({"host": "localhost.attacker.test"}, hosts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses of the LISTEN sockets on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address)
            if size == 4:
                found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _get(port: int, path: str, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _websocket_status(port: int, host: str, origin: str | None) -> int:
    """The HTTP status of a WebSocket handshake on Streamlit's stream (101 = accepted)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1])


def _start(cmd: list[str], log: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if _get(port, "/_stcore/health", f"localhost:{port}") == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"no answer on port {port}: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"  # no ~/.streamlit of the user running the tests
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "SB_EXPLORER_RUNS": "", "STREAMLIT_SERVER_HEADLESS": "true"}


def _assert_guarded(port: int) -> None:
    addresses = _listening(port)
    assert addresses and all(a in ("127.0.0.1", "::1") for a in addresses), addresses
    assert _get(port, "/", f"localhost:{port}") == 200
    assert _get(port, "/", f"127.0.0.1:{port}") == 200
    for path in ("/", "/_stcore/health", "/_stcore/host-config"):
        assert _get(port, path, f"rebind.attacker.test:{port}") == 403, path
    assert _websocket_status(port, f"localhost:{port}", f"http://localhost:{port}") == 101
    rebound = f"rebind.attacker.test:{port}"
    assert _websocket_status(port, rebound, f"http://{rebound}") == 403
    assert _websocket_status(port, f"localhost:{port}", "http://attacker.test") == 403


@pytest.mark.parametrize("launcher", ["streamlit-run", "router-explorer"])
def test_documented_start_listens_on_loopback_and_refuses_foreign_hosts(launcher, sample_db, tmp_path):
    port = _free_port()
    if launcher == "streamlit-run":  # README: `streamlit run apps/router-explorer -- --db runs.duckdb`
        cmd = [sys.executable, "-m", "streamlit", "run", "apps/router-explorer", "--server.port", str(port),
               "--", "--db", str(sample_db)]
    else:
        cmd = [sys.executable, "-c", "import sys; from router_explorer.cli import main; sys.exit(main())",
               "--port", str(port), "--headless", "--db", str(sample_db)]
    log = tmp_path / "server.log"
    proc = _start(cmd, log, port, _env(tmp_path))
    try:
        _assert_guarded(port)
    finally:
        _stop(proc)
    assert "WARNING" not in log.read_text()


def test_an_explicit_public_address_warns(sample_db, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "apps/router-explorer", "--server.port", str(port),
           "--server.address", "0.0.0.0", "--", "--db", str(sample_db)]
    log = tmp_path / "server.log"
    proc = _start(cmd, log, port, _env(tmp_path))
    try:
        assert _get(port, "/", f"rebind.attacker.test:{port}") == 403  # the guard still applies
    finally:
        _stop(proc)
    assert "anyone who can reach this address can read the run logs" in log.read_text()


def test_router_explorer_cli_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-c", "import sys; from router_explorer.cli import main; sys.exit(main())"]
    done = subprocess.run([*cmd, "--runs", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "run directory not found" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([*cmd, "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a TCP port" in done.stderr and done.stderr.count("\n") == 1
