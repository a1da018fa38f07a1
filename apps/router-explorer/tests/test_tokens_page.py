"""The token-routing page against a real ``sb-train serve`` app (uvicorn in a thread on 127.0.0.1, a
random-weight tiny SwitchBank with byte tokens): the heatmap shows the experts of POST /v1/route."""

from __future__ import annotations

import socket
import threading
import time

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("sb_train.serve.app")

from router_explorer.pages.tokens import route_from_server  # noqa: E402


@pytest.fixture(scope="module")
def route_server():
    import torch

    from sb_data.tokenizers import ByteTokenizer
    from sb_model import GPT, GPTConfig
    from sb_train.serve.app import build_app
    from sb_train.serve.served_model import ServedModel

    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=256)).eval()
    app = build_app(ServedModel(model, "tiny/random", ByteTokenizer()))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


def test_tokens_page_draws_the_servers_routing(app, charts, route_server):
    at = app(page="tokens")
    at.text_input(key="tokens_url").set_value(route_server).run()
    at.text_area(key="tokens_text").set_value("def f(x):\n").run()
    assert not at.exception and not at.error
    heat = charts(at)["tokens_heatmap"]["data"][0]
    routing = route_from_server(route_server, "def f(x):\n")
    assert len(routing["tokens"]) == 11  # the document-start token + 10 bytes
    assert heat["z"] == [[t["experts"][j][0] for t in routing["tokens"]] for j in range(4)]
    assert "gates" in heat["text"][0][1] and "token 1: d" in heat["text"][0][1]


def test_tokens_page_without_a_server_says_how_to_start_one(app):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    at = app(page="tokens")
    at.text_input(key="tokens_url").set_value(url).run()
    assert "no server answers" in at.error[0].value and "sb-train serve" in at.error[0].value


def test_tokens_page_from_a_checkpoint_equals_the_servers_routing(app, charts, route_server, monkeypatch):
    """Checkpoint mode computes the same JSON in-process: the loader is swapped for the server's model (the
    same seed, so the same weights); the checkpoint loading itself is sb-train's, tested there."""
    import torch

    from router_explorer.pages import tokens
    from sb_data.tokenizers import ByteTokenizer
    from sb_model import GPT, GPTConfig
    from sb_train.serve.served_model import ServedModel

    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(vocab_size=256)).eval()
    asked: list[str] = []

    def fake_loader(path: str) -> ServedModel:
        asked.append(path)
        return ServedModel(model, "tiny/random", ByteTokenizer())

    monkeypatch.setattr(tokens, "_served_model", fake_loader)
    at = app(page="tokens")
    at.radio(key="tokens_source").set_value("checkpoint").run()
    at.text_input(key="tokens_checkpoint").set_value("runs/some-run").run()
    at.text_area(key="tokens_text").set_value("def f(x):\n").run()
    assert not at.exception and not at.error
    assert asked and set(asked) == {"runs/some-run"}
    heat = charts(at)["tokens_heatmap"]["data"][0]
    routing = route_from_server(route_server, "def f(x):\n")
    assert heat["z"] == [[t["experts"][j][0] for t in routing["tokens"]] for j in range(4)]
