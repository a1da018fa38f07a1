"""Bad input gets an OpenAI-style JSON error with the right status and no traceback."""

from __future__ import annotations

import httpx
import openai
import pytest


def _post(server, body=None, *, content: bytes | None = None, path: str = "/v1/completions"
          ) -> httpx.Response:
    if content is not None:
        return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"})
    return httpx.post(server.url + path, json=body)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be >= 1"),
        ({"max_tokens": -5}, "max_tokens", "'max_tokens' must be >= 1"),
        ({"temperature": -0.5}, "temperature", "'temperature' must be >= 0"),
        ({"top_p": 1.5}, "top_p", "'top_p' must be <= 1"),
        ({"foo": 1}, "foo", "unknown field 'foo'"),
        ({"logprobs": 3}, "logprobs", "'logprobs' is not supported"),
        ({"stop": ["a", ""]}, "stop", "'stop' must be"),
        ({"prompt": ["a", "b"]}, "prompt", "one request per prompt"),
        ({"prompt": "x" * 300}, "prompt", "exceeds the model's context of 256 tokens"),
        ({"prompt": "x" * 200, "max_tokens": 100}, "max_tokens", "ask for at most 55 tokens"),
        ({"prompt": "a\x00b"}, "prompt", "NUL"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server, served, change, param, words):
    body = {"model": served.name, "prompt": "hello", "max_tokens": 4, **change}
    err = _error(_post(server, body), 400)
    assert err["param"] == param and words in err["message"]


def test_neutral_values_of_unsupported_fields_are_accepted(server, served):
    body = {"model": served.name, "prompt": "hi", "max_tokens": 2, "echo": False, "presence_penalty": 0,
            "logprobs": None, "user": "me"}
    assert _post(server, body).status_code == 200


def test_unknown_model_is_404_and_the_client_raises_with_the_message(server, served, client):
    err = _error(_post(server, {"model": "gpt-4", "prompt": "x"}), 404)
    assert err["code"] == "model_not_found" and served.name in err["message"]
    with pytest.raises(openai.BadRequestError, match="must be >= 1"):
        client.completions.create(model=served.name, prompt="x", max_tokens=0)


def test_bodies_that_are_not_utf8_json_objects(server):
    assert _error(_post(server, content=b'{"prompt": "\xff\xfe"}'), 400)["code"] == "invalid_encoding"
    assert _error(_post(server, content=b'{"prompt": '), 400)["code"] == "invalid_json"
    assert "JSON list" in _error(_post(server, content=b"[1, 2]"), 400)["message"]
    assert "'text' must not be empty" in _error(_post(server, {"text": ""}, path="/v1/route"), 400)["message"]


def test_oversized_bodies_are_413_with_or_without_a_content_length(start_server, served):
    small = start_server(max_body_bytes=512)
    big = b'{"model": "m", "prompt": "' + b"x" * 2000 + b'"}'
    assert "--max-body-bytes" in _error(_post(small, content=big), 413)["message"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield big[:400]
        yield big[400:]

    r = httpx.post(small.url + "/v1/completions", content=chunked())
    assert _error(r, 413)["code"] == "body_too_large"


def test_unknown_paths_and_methods_are_json_errors(server):
    assert "/v1/completions" in _error(httpx.get(server.url + "/v1/chat"), 404)["message"]
    _error(httpx.get(server.url + "/v1/completions"), 405)
