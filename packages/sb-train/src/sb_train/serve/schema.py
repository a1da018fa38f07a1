"""Request bodies: bytes -> JSON object -> a validated :class:`CompletionRequest` or :class:`RouteRequest`.

Every refusal is an :class:`~sb_train.serve.errors.ApiError` (400) that names the field and the fix. Fields
of OpenAI's completions API that this server does not implement are refused, not ignored
(docs/design/serving.md, API differences); ``null`` counts as absent, and a neutral value (``echo: false``,
``presence_penalty: 0``, ...) is accepted because it asks for nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sb_train.serve.errors import ApiError

MAX_N = 16
MAX_STOP = 4
# OpenAI fields this server does not implement, with the value that asks for nothing
NEUTRAL_VALUES: dict[str, Any] = {
    "echo": False,
    "logprobs": None,
    "best_of": 1,
    "suffix": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "stream_options": None,
}
COMPLETION_FIELDS = (
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
    "routing", "user",
)


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    routing: bool = False


@dataclass(frozen=True)
class RouteRequest:
    text: str


def decode_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; refuses non-UTF-8 bytes, malformed JSON and non-object documents."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {err.start}); send UTF-8 encoded "
                       "JSON", code="invalid_encoding") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"the request body is not valid JSON ({err.msg} at line {err.lineno} column "
                       f"{err.colno}); send a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got a JSON {type(body).__name__}",
                       code="invalid_json")
    return body


def parse_completion(body: dict[str, Any], *, model_name: str, max_queue: int) -> CompletionRequest:
    """Validate a ``POST /v1/completions`` body against this server (``model_name``, queue size)."""
    _refuse_unknown(body, COMPLETION_FIELDS)
    model = _string(body, "model", required=True)
    if model != model_name:
        raise ApiError(404, f"the model {model!r} is not served here; this server serves {model_name!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (or a list of exactly one string); batches of prompts "
                       "and token-id prompts are not supported: send one request per prompt", param="prompt")
    max_tokens = _integer(body, "max_tokens", 16, low=1)
    temperature = _number(body, "temperature", 1.0, low=0.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be in (0, 1]; use temperature 0 for greedy decoding", param="top_p")
    top_k = _integer(body, "top_k", None, low=1)
    n = _integer(body, "n", 1, low=1, high=min(MAX_N, max_queue))
    seed = _integer(body, "seed", None)
    stream = _boolean(body, "stream")
    routing = _boolean(body, "routing")
    if stream and routing:
        raise ApiError(400, "'routing' is not available with 'stream'; ask without streaming, or POST the "
                       "finished text to /v1/route", param="routing")
    _string(body, "user", required=False)
    return CompletionRequest(model, prompt, max_tokens, temperature, top_p, top_k, n, _stop(body), seed,
                             stream, routing)


def parse_route(body: dict[str, Any]) -> RouteRequest:
    """Validate a ``POST /v1/route`` body: ``{"text": "..."}`` (``model`` is accepted and ignored)."""
    _refuse_unknown(body, ("text", "model"))
    text = _string(body, "text", required=True)
    assert text is not None
    if not text:
        raise ApiError(400, "'text' must not be empty", param="text")
    return RouteRequest(text)


# ------------------------------------------------------------------------------------------------- fields
def _refuse_unknown(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name, value in body.items():
        if name in allowed or value is None:
            continue
        if name in NEUTRAL_VALUES:
            neutral = NEUTRAL_VALUES[name]
            if value == neutral and isinstance(value, bool) == isinstance(neutral, bool):
                continue
            raise ApiError(400, f"'{name}' is not supported by this server; leave it out",
                           param=name, code="unsupported_field")
        raise ApiError(400, f"unknown field '{name}'; the fields are: {', '.join(allowed)}", param=name,
                       code="unknown_field")


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"'{name}' is required (a string)", param=name)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a string, got {type(value).__name__}", param=name)
    return value


def _integer(body: dict[str, Any], name: str, default: int | None, *, low: int | None = None,
             high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {json.dumps(value)[:40]}", param=name)
    if low is not None and value < low:
        raise ApiError(400, f"'{name}' must be >= {low} (got {value})", param=name)
    if high is not None and value > high:
        raise ApiError(400, f"'{name}' must be <= {high} on this server (got {value})", param=name)
    return value


def _number(
    body: dict[str, Any], name: str, default: float, *, low: float, high: float | None = None
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number, got {json.dumps(value)[:40]}", param=name)
    if value < low:
        raise ApiError(400, f"'{name}' must be >= {low:g} (got {value:g})", param=name)
    if high is not None and value > high:
        raise ApiError(400, f"'{name}' must be <= {high:g} (got {value:g})", param=name)
    return float(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false, got {json.dumps(value)[:40]}", param=name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    well_formed = isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)
    if not well_formed or len(stops) > MAX_STOP:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty "
                       "strings", param="stop")
    return tuple(stops)
