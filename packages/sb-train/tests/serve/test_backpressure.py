"""Backpressure and departures: a full queue answers 429 with Retry-After at once (never a hang) and the
queued requests still finish; a client that leaves mid-stream takes its row out of the batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_full_queue_is_429_with_retry_after_and_queued_requests_finish(start_server, served):
    server = start_server(max_batch=1, max_queue=2)
    engine = server.engine
    gate, entered = threading.Event(), threading.Event()
    prefill = engine._prefill

    def held_prefill(*args):  # the worker stops inside the first prefill until the test lets it go
        entered.set()
        gate.wait(60)
        return prefill(*args)

    engine._prefill = held_prefill
    body = {"model": served.name, "prompt": "x", "max_tokens": 5, "temperature": 0}
    url = server.url + "/v1/completions"
    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(httpx.post, url, json=body, timeout=60)]
        assert entered.wait(30)  # request 1 holds the only row
        running += [pool.submit(httpx.post, url, json=body, timeout=60) for _ in range(2)]
        _wait_until(lambda: engine.queue_depth() == 2, "two queued choices")
        refused = httpx.post(url, json=body, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        too_many = httpx.post(url, json={**body, "n": 3}, timeout=10)  # n above --max-queue: never fits
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
        gate.set()
        assert [f.result().status_code for f in running] == [200, 200, 200]
    assert server.app.state.metrics.request_count("completions", "429") == 1


def test_a_client_leaving_mid_stream_frees_its_row(start_server, served):
    server = start_server()
    engine, metrics = server.engine, server.app.state.metrics
    step = engine._step

    def slow_step():  # 20 ms per token: 200 tokens take 4 s, far longer than the client stays
        time.sleep(0.02)
        step()

    engine._step = slow_step
    body = {"model": served.name, "prompt": "x", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        _wait_until(lambda: engine.active_rows() == 1, "the row to join the batch")
    # the connection is closed: the request is cancelled and its row leaves the batch
    _wait_until(lambda: metrics.request_count("completions", "cancelled") == 1, "the cancellation")
    _wait_until(lambda: engine.active_rows() == 0, "the row to be freed")
    assert engine._state is None  # no cache rows kept
    generated = int(next(line.split()[1] for line in metrics.render().splitlines()
                         if line.startswith("sb_serve_generated_tokens_total")))
    assert generated < 200
