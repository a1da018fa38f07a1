"""Serving fixtures: one smoke-run checkpoint per session, the model loaded from it, and servers on
127.0.0.1 (uvicorn in a thread of this process, on a socket bound to a free port; shut down cleanly)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

import uvicorn
from train_helpers import only_run_dir, smoke_config

from sb_train.serve.app import build_app
from sb_train.serve.served_model import ServedModel, load_served_model


@pytest.fixture(scope="session")
def smoke_checkpoint(smoke_data, tmp_path_factory) -> Path:
    """The run directory of a 12-step smoke run (its newest checkpoint is served)."""
    from sb_train.trainer import Trainer

    out = tmp_path_factory.mktemp("serve-run")
    Trainer(smoke_config(smoke_data, out)).run()
    return only_run_dir(out)


@pytest.fixture(scope="session")
def served(smoke_checkpoint) -> ServedModel:
    return load_served_model(smoke_checkpoint)


class RunningServer:
    def __init__(self, served: ServedModel, **options: int) -> None:
        self.app = build_app(served, **options)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def engine(self):
        return self.app.state.engine

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the test server did not shut down"


@pytest.fixture
def start_server(served) -> Iterator[Callable[..., RunningServer]]:
    """start_server(max_batch=..., max_queue=..., max_body_bytes=...): a server closed after the test."""
    servers: list[RunningServer] = []

    def start(**options: int) -> RunningServer:
        servers.append(RunningServer(served, **options))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def server(served) -> Iterator[RunningServer]:
    """The session's server with default limits (max_batch 8, max_queue 64, 1 MiB bodies)."""
    s = RunningServer(served)
    yield s
    s.close()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
