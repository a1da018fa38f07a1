"""The completions API through the official openai client against a live server on 127.0.0.1: text, streaming,
n > 1, seeds, stop strings, greedy output equal to sb-model's generate(), and the routing extension equal to
the bank's own decisions (RoutingTrace of a forward)."""

from __future__ import annotations

import httpx
import numpy as np
import torch

from sb_model import RoutingTrace


def _greedy_reference(served, prompt: str, max_tokens: int) -> tuple[str, str]:
    """(text, finish_reason) that generate() gives for ``prompt`` encoded as the server encodes it."""
    ids = served.encode_prompt(prompt)
    out = served.model.generate(torch.tensor(ids), max_tokens, 0.0)[len(ids):].tolist()
    if served.eod in out:
        return served.decode(out[: out.index(served.eod)]), "stop"
    return served.decode(out), "length"


def _model_id(client) -> str:
    return client.models.list().data[0].id


def test_models_health_and_a_greedy_completion_equal_to_generate(client, server, served):
    models = client.models.list().data
    assert [m.id for m in models] == [served.name] and served.name.endswith("/step_000011")
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["rows_independent"] is True
    prompt = "def main():\n    "
    r = client.completions.create(model=served.name, prompt=prompt, max_tokens=40, temperature=0)
    assert r.object == "text_completion" and r.model == served.name and len(r.choices) == 1
    text, reason = _greedy_reference(served, prompt, 40)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text, reason)
    assert r.usage.prompt_tokens == 1 + len(prompt.encode())  # document-start token + bytes
    assert r.usage.completion_tokens == (40 if reason == "length" else len(text.encode()) + 1)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_gives_the_same_text_in_chunks_then_done(client, served):
    prompt = "import os\n"
    whole = client.completions.create(model=served.name, prompt=prompt, max_tokens=30, temperature=0)
    chunks = list(client.completions.create(model=served.name, prompt=prompt, max_tokens=30, temperature=0,
                                            stream=True))
    assert len(chunks) >= 2 and all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(server, served):
    body = {"model": served.name, "prompt": "x", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_n_choices_and_seed_reproducibility(client, served):
    kw = {"model": served.name, "prompt": "The ", "max_tokens": 24, "temperature": 1.0, "n": 3}
    a = client.completions.create(seed=123, **kw)
    b = client.completions.create(seed=123, **kw)
    c = client.completions.create(seed=7, **kw)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    texts = [ch.text for ch in a.choices]
    assert texts == [ch.text for ch in b.choices]  # same seed -> same texts
    assert len(set(texts)) > 1  # the n choices are different draws
    assert texts != [ch.text for ch in c.choices]
    # a seeded choice does not depend on its batch mates: choice 0 alone equals choice 0 of the n = 3 request
    solo = client.completions.create(seed=123, **{**kw, "n": 1})
    assert solo.choices[0].text == texts[0]


def test_stop_strings_end_the_text_before_them(client, served):
    prompt = "def main():\n    "
    full, _ = _greedy_reference(served, prompt, 60)
    stop = full[10:12]  # a string the greedy text is known to contain
    assert stop and stop in full
    r = client.completions.create(model=served.name, prompt=prompt, max_tokens=60, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[: full.index(stop)]
    streamed = client.completions.create(model=served.name, prompt=prompt, max_tokens=60, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_routing_extension_equals_the_banks_own_decisions(client, server, served):
    prompt = "for i in range(3):"
    r = client.completions.create(model=served.name, prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"routing": True})
    routing = r.choices[0].model_extra["routing"]
    ids = [t["id"] for t in routing["tokens"]]
    prompt_ids = served.encode_prompt(prompt)
    assert ids[: len(prompt_ids)] == prompt_ids and routing["prompt_tokens"] == len(prompt_ids)
    assert served.decode(ids[len(prompt_ids):]).startswith(r.choices[0].text)
    trace = RoutingTrace()
    served.model(torch.tensor([ids]), attention="sdpa", routing_trace=trace)
    assert routing["layers"] == trace.layer_indices() == [0, 1, 2, 3]
    for j, layer in enumerate(routing["layers"]):
        assert [t["experts"][j] for t in routing["tokens"]] == trace.layers[layer].experts[0].tolist()
        assert [t["gates"][j] for t in routing["tokens"]] == trace.layers[layer].gates[0].tolist()
    assert routing["tokens"][0]["token"] == "<|endoftext|>" and routing["tokens"][1]["token"] == "f"
    # /v1/route: the routing of a text without generating, the same decisions
    # (a forward over fewer tokens: the same experts, gates equal up to float rounding)
    routed = httpx.post(server.url + "/v1/route", json={"text": prompt}).json()["routing"]
    assert [t["experts"] for t in routed["tokens"]] == [t["experts"] for t in routing["tokens"][: len(ids)]][
        : len(prompt_ids)]
    np.testing.assert_allclose([t["gates"] for t in routed["tokens"]],
                               [t["gates"] for t in routing["tokens"][: len(prompt_ids)]], rtol=1e-5)


def test_metrics_are_prometheus_text_with_the_documented_series(client, server, served):
    client.completions.create(model=served.name, prompt="a", max_tokens=2, temperature=0)
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['sb_serve_requests_total{endpoint="completions",status="200"}'] >= 1
    assert values["sb_serve_generated_tokens_total"] >= 2
    assert values["sb_serve_queue_depth"] == 0
    assert values['sb_serve_request_latency_seconds{quantile="0.5"}'] > 0
    assert values['sb_serve_request_latency_seconds{quantile="0.95"}'] >= values[
        'sb_serve_request_latency_seconds{quantile="0.5"}']
    assert "sb_serve_tokens_per_second" in values
