"""Safe serving: the Streamlit options both launchers use, the Host/Origin guard, and the start-up warning.

`streamlit run apps/router-explorer` reads these options from apps/router-explorer/.streamlit/config.toml
(Streamlit reads the `.streamlit/config.toml` next to the main script, from any working directory); the
`router-explorer` command passes them as flags. A test keeps the file and SAFE_OPTIONS equal.

The guard answers 403 to every HTTP request and WebSocket whose Host header (or Origin, when sent) names
a host outside `server.allowedHosts` (loopback names by default), so a DNS-rebinding page, which reaches
the port under its own host name, gets nothing. Streamlit's own `server.allowedHosts` check covers only
its WebSocket; the guard covers every route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOGGER = logging.getLogger("router_explorer")
PAGE_SCRIPT = str(Path(__file__).with_name("_entry.py"))  # the Streamlit page script the App runs
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_ADDRESS = "127.0.0.1"
SAFE_OPTIONS: dict[str, Any] = {
    "server.address": DEFAULT_ADDRESS,
    "server.allowedHosts": list(LOOPBACK_HOSTS),
    "server.enableCORS": True,
    "server.enableXsrfProtection": True,
    "server.enableStaticServing": False,
    "server.runOnSave": False,
    "server.fileWatcherType": "none",
    "client.showErrorDetails": "none",
    "client.toolbarMode": "viewer",
    "client.allowedOrigins": [],
    "browser.gatherUsageStats": False,
    "global.developmentMode": False,
}
EXPOSED_WARNING = (
    "router-explorer: WARNING: listening on {address}, not on loopback: anyone who can reach this "
    "address can read the run logs (the explorer has no login). To share it, keep it on 127.0.0.1 behind "
    "an authenticating reverse proxy (apps/router-explorer/README.md, 'Serving it to a team')."
)


def is_loopback(address: str | None) -> bool:
    if not address:
        return False  # Streamlit's unset address listens on every interface
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(value: str | None, with_scheme: bool) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value if with_scheme else f"//{value}")
        _ = parts.port  # validates the port
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or (not with_scheme and parts.path):
        return None
    return (parts.hostname or "").rstrip(".").lower() or None


def allowed_hosts() -> list[str]:
    """server.allowedHosts (loopback names when empty) plus the address the server was told to use."""
    from streamlit import config

    configured = config.get_option("server.allowedHosts") or LOOPBACK_HOSTS
    hosts = [h.strip().lower().rstrip(".") for h in configured]
    address = config.get_option("server.address")
    if address and not address.startswith("unix:"):
        hosts.append(address.strip("[]").lower())
    return hosts


def host_matches(hostname: str | None, patterns: Iterable[str]) -> bool:
    if hostname is None:
        return False
    for pattern in patterns:
        wildcard = pattern.startswith("*.") and hostname.endswith(pattern[1:])
        if pattern == "*" or hostname == pattern or wildcard:
            return True
    return False


def request_allowed(headers: dict[str, str], patterns: Iterable[str]) -> bool:
    """A request may reach the app when its Host, and its Origin if it sends one, are allowed hosts."""
    patterns = list(patterns)
    if not host_matches(_hostname(headers.get("host"), with_scheme=False), patterns):
        return False
    origin = headers.get("origin")
    return origin is None or host_matches(_hostname(origin, with_scheme=True), patterns)


class HostGuard:
    """ASGI middleware: 403 for any request whose Host/Origin is not an allowed host (see module doc)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if not request_allowed(headers, allowed_hosts()):
                LOGGER.warning("refused a request with Host %r, Origin %r (not in server.allowedHosts)",
                               headers.get("host"), headers.get("origin"))
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Forbidden: this host name is not allowed (server.allowedHosts)\n"
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def check_serving_options() -> list[str]:
    """Warnings for options that differ from the safe ones (the address one names the exposure)."""
    from streamlit import config

    warnings = []
    address = config.get_option("server.address")
    if not is_loopback(address):
        warnings.append(EXPOSED_WARNING.format(address=address or "every interface"))
    for name, safe in SAFE_OPTIONS.items():
        if name in ("server.address", "server.allowedHosts", "server.fileWatcherType"):
            continue
        if config.get_option(name) != safe:
            warnings.append(f"router-explorer: WARNING: {name} is {config.get_option(name)!r}, the safe "
                            f"setting is {safe!r} (apps/router-explorer/.streamlit/config.toml)")
    return warnings


@contextlib.asynccontextmanager
async def announce(_app: Any) -> AsyncIterator[None]:
    """App lifespan: print the serving warnings once, when the server starts."""
    for line in check_serving_options():
        print(line, file=sys.stderr, flush=True)
    yield


def log_script_error(err: Exception) -> bool:
    """on_script_error: the details go to the server log; the page shows the app's friendly message."""
    LOGGER.error("page failed", exc_info=err)
    return False


def config_toml() -> str:
    """SAFE_OPTIONS as the text of .streamlit/config.toml."""
    sections: dict[str, list[str]] = {}
    for name, value in SAFE_OPTIONS.items():
        section, key = name.split(".", 1)
        sections.setdefault(section, []).append(f"{key} = {_toml(value)}")
    return "\n".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value) + '"'


def streamlit_flags(address: str, port: int, allowed: Iterable[str] = ()) -> list[str]:
    """SAFE_OPTIONS as `streamlit run` flags, with this address, port and extra allowed host names."""
    options = dict(SAFE_OPTIONS)
    options["server.address"] = address
    options["server.allowedHosts"] = [*SAFE_OPTIONS["server.allowedHosts"], *allowed]
    flags = ["--server.port", str(port)]
    for name, value in options.items():
        if isinstance(value, list):  # a list option is given once per item (an empty one stays in the file)
            for item in value:
                flags += [f"--{name}", str(item)]
        else:
            flags += [f"--{name}", _toml(value).strip('"')]
    return flags
