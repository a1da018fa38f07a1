"""The HTTP routes (Starlette): /v1/completions, /v1/route, /v1/models, /health, /metrics.

Bodies are read with a size limit, parsed by :mod:`sb_train.serve.schema` and handed to the
:class:`~sb_train.serve.engine.BatchEngine`; every refusal is an OpenAI-style JSON error without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from sb_train.serve.engine import BatchEngine, Job
from sb_train.serve.errors import ApiError, error_body
from sb_train.serve.metrics import ServerMetrics
from sb_train.serve.schema import CompletionRequest, decode_json_body, parse_completion, parse_route
from sb_train.serve.served_model import ServedModel

LOGGER = logging.getLogger("sb_train.serve")
DEFAULT_MAX_BODY_BYTES = 1 << 20
DISCONNECT_POLL_S = 0.5


def build_app(
    served: ServedModel,
    *,
    max_batch: int = 8,
    max_queue: int = 64,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The ASGI app; its batching worker starts and stops with the app's lifespan."""
    metrics = ServerMetrics()
    engine = BatchEngine(served.model, served.decode, served.token_text, max_batch=max_batch,
                         max_queue=max_queue, metrics=metrics)
    metrics.add_gauge("sb_serve_queue_depth", "Choices waiting for a batch row.", engine.queue_depth)
    metrics.add_gauge("sb_serve_active_rows", "Choices decoding in the batch now.", engine.active_rows)
    created = int(time.time())
    max_len = served.model.config.max_seq_len

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise ApiError(413, f"the request body ({int(declared)} bytes) is larger than this server's "
                           f"limit of {max_body_bytes} bytes (--max-body-bytes)", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, f"the request body is larger than this server's limit of "
                               f"{max_body_bytes} bytes (--max-body-bytes)", code="body_too_large")
            chunks.append(chunk)
        return decode_json_body(b"".join(chunks))

    async def completions(request: Request) -> Response:
        started = time.monotonic()
        try:
            req = parse_completion(await read_json(request), model_name=served.name, max_queue=max_queue)
            prompt_ids = _prompt_ids(served, req, max_len)
            if req.routing and served.model.bank is None:
                raise ApiError(400, "'routing' needs a model with an expert bank; this one has dense FFNs",
                               param="routing")
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple] = asyncio.Queue()
            job = Job(req, prompt_ids, lambda ev: _post(loop, events, ev))
            engine.submit(job)
        except ApiError as err:
            metrics.request_done("completions", str(err.status))
            raise
        metrics.tokens(0, prompt=len(prompt_ids))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served.name}
        if req.stream:
            return StreamingResponse(_stream(request, job, events, head, engine, metrics, started),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, finished, routing, generated = [""] * req.n, [None] * req.n, [None] * req.n, 0
        while sum(f is not None for f in finished) < req.n:
            try:
                ev = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    _cancel(job, engine, metrics, started)
                    return Response(status_code=499)
                continue
            if ev[0] == "delta":
                texts[ev[1]] += ev[2]
            elif ev[0] == "done":
                finished[ev[1]], routing[ev[1]] = ev[2], ev[4]
                generated += ev[3]
            else:
                metrics.request_done("completions", "500", time.monotonic() - started)
                raise ApiError(500, ev[1], code="generation_failed")
        choices = []
        for i in range(req.n):
            choice = {"text": texts[i], "index": i, "logprobs": None, "finish_reason": finished[i]}
            if req.routing:
                choice["routing"] = routing[i]
            choices.append(choice)
        metrics.request_done("completions", "200", time.monotonic() - started)
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": generated,
                 "total_tokens": len(prompt_ids) + generated}
        return JSONResponse({**head, "choices": choices, "usage": usage})

    async def route(request: Request) -> Response:
        try:
            text = parse_route(await read_json(request)).text
            ids = _ids_within_context(served, text, max_len)
            if served.model.bank is None:
                raise ApiError(400, "this model has dense FFNs: there is no routing to show", param="text")
            result = await asyncio.wrap_future(engine.submit_route(ids))
        except ApiError as err:
            metrics.request_done("route", str(err.status))
            raise
        metrics.request_done("route", "200")
        return JSONResponse({"model": served.name, "routing": result})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": created, "owned_by": "sb-train",
             "max_seq_len": max_len}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": served.name, **engine.stats()})

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/route", route, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    return app


def _prompt_ids(served: ServedModel, req: CompletionRequest, max_len: int) -> list[int]:
    ids = _encode(served, req.prompt, "prompt")
    if len(ids) + req.max_tokens > max_len:
        raise ApiError(400, f"the prompt ({len(ids)} tokens with the document-start token) + max_tokens "
                       f"({req.max_tokens}) = {len(ids) + req.max_tokens} exceeds the model's context of "
                       f"{max_len} tokens; shorten the prompt or ask for at most "
                       f"{max(max_len - len(ids), 0)} tokens",
                       param="max_tokens" if len(ids) < max_len else "prompt", code="context_length_exceeded")
    return ids


def _ids_within_context(served: ServedModel, text: str, max_len: int) -> list[int]:
    ids = _encode(served, text, "text")
    if len(ids) > max_len:
        raise ApiError(400, f"the text is {len(ids)} tokens with the document-start token, more than the "
                       f"model's context of {max_len}; send a shorter text", param="text",
                       code="context_length_exceeded")
    return ids


def _encode(served: ServedModel, text: str, param: str) -> list[int]:
    try:
        return served.encode_prompt(text)
    except ValueError as err:  # e.g. a NUL character, which the bytes tokenizer reserves
        raise ApiError(400, f"'{param}' cannot be encoded: {err}", param=param) from None


def _post(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, event: tuple) -> None:
    with contextlib.suppress(RuntimeError):  # a closed event loop: the server is going down
        loop.call_soon_threadsafe(events.put_nowait, event)


def _cancel(job: Job, engine: BatchEngine, metrics: ServerMetrics, started: float) -> None:
    job.cancelled.set()
    engine.wake()
    metrics.request_done("completions", "cancelled", time.monotonic() - started)


async def _stream(request: Request, job: Job, events: asyncio.Queue, head: dict, engine: BatchEngine,
                  metrics: ServerMetrics, started: float) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text delta and one with each choice's finish_reason, then
    ``data: [DONE]``. A client that goes away cancels the job (its rows leave the batch)."""
    done, complete = 0, False
    try:
        while done < job.request.n:
            ev = await events.get()
            if ev[0] == "error":
                yield _sse(error_body(500, ev[1], code="generation_failed"))
                metrics.request_done("completions", "500", time.monotonic() - started)
                complete = True
                return
            text, reason = (ev[2], None) if ev[0] == "delta" else ("", ev[2])
            done += ev[0] == "done"
            yield _sse({**head, "choices": [{"text": text, "index": ev[1], "logprobs": None,
                                              "finish_reason": reason}]})
        yield "data: [DONE]\n\n"
        complete = True
        metrics.request_done("completions", "200", time.monotonic() - started)
    finally:
        if not complete:
            _cancel(job, engine, metrics, started)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        message += ("; the endpoints are POST /v1/completions, POST /v1/route, GET /v1/models, /health, "
                    "/metrics")
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    LOGGER.exception("unhandled error in %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, f"internal server error ({type(exc).__name__}); see the server log"),
                        status_code=500)
