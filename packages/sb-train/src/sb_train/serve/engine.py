"""The batching engine: one worker thread owns the model and decodes every admitted choice in one batch.

Choices wait in a bounded queue; at each decode step the waiting choices that can join the running batch are
prefilled together and joined to it (continuous batching at token granularity). A row is a choice's tokens
left-padded with end-of-document tokens so that its document starts on an attention-block boundary: the
padding is then invisible to the choice, and a batched choice decodes the same tokens as alone
(docs/design/serving.md, batching). Models whose routing couples rows (expert capacity, the sequence-level
forward EMA) decode one choice at a time.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from sb_model import GPT
from sb_model.generation import DecodeState, concat_rows, decode, new_decode_state, select_rows
from sb_train.serve.errors import ApiError
from sb_train.serve.metrics import ServerMetrics
from sb_train.serve.routing_json import routing_json, trace_tokens
from sb_train.serve.sampling import CompletionText, sample_token
from sb_train.serve.schema import CompletionRequest

LOGGER = logging.getLogger("sb_train.serve")
RETRY_AFTER_S = 1


@dataclass
class Job:
    """One completion request: its choices' events go to ``emit`` (called from the worker thread)."""

    request: CompletionRequest
    prompt_ids: list[int]  # the document-start token, then the prompt's tokens
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Choice:
    """One row of the batch (a request with ``n`` choices has ``n`` of them)."""

    job: Job
    index: int
    text: CompletionText
    generator: torch.Generator | None
    generated: int = 0
    pending: int | None = None  # the sampled token the next step feeds
    finish_reason: str | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.job.prompt_ids)

    @property
    def max_tokens(self) -> int:
        return self.job.request.max_tokens


class BatchEngine:
    def __init__(
        self,
        model: GPT,
        decode_text: Callable[[list[int]], str],
        token_text: Callable[[int], str],
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        metrics: ServerMetrics | None = None,
    ) -> None:
        cfg = model.config
        self.model = model
        self.decode_text = decode_text
        self.token_text = token_text
        self.eod = cfg.eod_token_id
        self.max_len = cfg.max_seq_len
        self.align = cfg.block_size  # attention windows and router block-position flags use this block
        bank = model.bank.config if model.bank is not None else None
        self.rows_independent = bank is None or (bank.capacity_factor is None and not bank.use_forward_ema)
        self.max_rows = max_batch if self.rows_independent else 1
        self.max_queue = max_queue
        self.metrics = metrics or ServerMetrics()
        self.device = model.embed.weight.device
        self._cond = threading.Condition()
        self._waiting: deque[Choice] = deque()
        self._routes: deque[tuple[list[int], Future]] = deque()
        self._rows: list[Choice] = []
        self._state: DecodeState | None = None
        self._draining = False
        self._stopping = False
        self.peak_rows = 0  # the largest batch decoded so far
        self._thread = threading.Thread(target=self._work, name="sb-serve-engine", daemon=True)

    # ------------------------------------------------------------------------------------- HTTP side
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def queue_depth(self) -> int:
        return len(self._waiting)

    def active_rows(self) -> int:
        return len(self._rows)

    def submit(self, job: Job) -> None:
        """Queue the job's choices, or refuse with 429 (Retry-After) when the queue has no room for them."""
        req = job.request
        choices = [
            Choice(job, i, CompletionText(self.decode_text, req.stop), self._generator(req, i))
            for i in range(req.n)
        ]
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) + len(choices) > self.max_queue:
                raise ApiError(429, f"the server is busy: {len(self._waiting)} choice(s) wait for a batch "
                               f"row (--max-queue {self.max_queue}); retry after {RETRY_AFTER_S} s",
                               code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._waiting.extend(choices)
            self._cond.notify_all()

    def submit_route(self, ids: list[int]) -> Future:
        """The routing JSON of ``ids``, computed by the worker between decode steps."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            self._routes.append((ids, future))
            self._cond.notify_all()
        return future

    def wake(self) -> None:
        """Make the worker look at cancellations now (a client went away)."""
        with self._cond:
            self._cond.notify_all()

    def _generator(self, req: CompletionRequest, index: int) -> torch.Generator | None:
        if req.temperature == 0:
            return None
        seed = secrets.randbits(62) if req.seed is None else req.seed + index
        return torch.Generator(device=self.device).manual_seed(seed)

    # ------------------------------------------------------------------------------------- worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._rows or self._routes):
                    self._cond.wait()
                if self._stopping:
                    break
                routes = list(self._routes)
                self._routes.clear()
                for c in [c for c in self._waiting if c.job.cancelled.is_set()]:
                    self._waiting.remove(c)
                joiners, length = self._pick_joiners()
            for ids, future in routes:
                self._route(ids, future)
            try:
                self._drop_cancelled()
                if joiners:
                    self._prefill(joiners, length)
                if self._rows:
                    self._step()
            except Exception as err:  # a failed step fails its requests, never the server
                LOGGER.exception("decode step failed")
                for c in self._rows + joiners:
                    c.job.emit(("error", f"generation failed: {type(err).__name__}: {err}"))
                self._rows, self._state = [], None
        self._fail_waiting()

    def _pick_joiners(self) -> tuple[list[Choice], int]:
        """(choices that join at this step, the row length they are padded to); called under the lock."""
        free = self.max_rows - len(self._rows)
        if free <= 0 or not self._waiting:
            return [], 0
        if self._state is not None:  # join the running batch at its length
            length = self._state.length
            if self._draining:
                return [], 0
            picked = [c for c in self._waiting if self._fits(c, length)][:free]
            oldest = self._waiting[0]
            if oldest not in picked and (
                self._earliest_join(oldest, length) + oldest.max_tokens > self.max_len
            ):
                self._draining = True  # the oldest can only start a fresh batch: let this one finish
        else:
            self._draining = False
            first = self._waiting[0]
            picked, length = [first], first.prompt_len
            for c in list(self._waiting)[1:]:
                if len(picked) >= free:
                    break
                if (c.prompt_len - length) % self.align:
                    continue
                longer = max(length, c.prompt_len)
                if all(longer + p.max_tokens <= self.max_len for p in [*picked, c]):
                    picked.append(c)
                    length = longer
        for c in picked:
            self._waiting.remove(c)
        return picked, length

    def _fits(self, c: Choice, length: int) -> bool:
        pad = length - c.prompt_len
        return pad >= 0 and pad % self.align == 0 and length + c.max_tokens <= self.max_len

    def _earliest_join(self, c: Choice, length: int) -> int:
        start = max(length, c.prompt_len)
        return c.prompt_len + -(-(start - c.prompt_len) // self.align) * self.align

    def _prefill(self, joiners: list[Choice], length: int) -> None:
        rows = [[self.eod] * (length - c.prompt_len) + c.job.prompt_ids for c in joiners]
        capacity = length + max(c.max_tokens for c in joiners)
        state = new_decode_state(self.model, len(joiners), capacity)
        logits = decode(self.model, torch.tensor(rows, device=self.device), state)[:, -1]
        for i, c in enumerate(joiners):
            self._accept(c, logits[i])
        live = [i for i, c in enumerate(joiners) if c.finish_reason is None]
        if not live:
            return
        state = state if len(live) == len(joiners) else select_rows(state, live)
        self._state = state if self._state is None else concat_rows([self._state, state])
        self._rows += [joiners[i] for i in live]
        self.peak_rows = max(self.peak_rows, len(self._rows))

    def _step(self) -> None:
        assert self._state is not None
        feed = torch.tensor([[c.pending] for c in self._rows], device=self.device)
        logits = decode(self.model, feed, self._state)[:, -1]
        for i, c in enumerate(self._rows):
            self._accept(c, logits[i])
        self._keep_live_rows()

    def _accept(self, c: Choice, logits: torch.Tensor) -> None:
        req = c.job.request
        token = sample_token(logits, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                             generator=c.generator)
        c.generated += 1
        self.metrics.tokens(1)
        if token == self.eod:
            self._finish(c, "stop")
            return
        delta, stopped = c.text.push(token)
        if delta:
            c.job.emit(("delta", c.index, delta))
        if stopped:
            self._finish(c, "stop")
        elif c.generated >= c.max_tokens:
            self._finish(c, "length")
        else:
            c.pending = token

    def _finish(self, c: Choice, reason: str) -> None:
        c.finish_reason = reason
        rest = c.text.flush()
        if rest:
            c.job.emit(("delta", c.index, rest))
        routing = None
        if c.job.request.routing:
            ids = c.job.prompt_ids + c.text.ids
            routing = routing_json(trace_tokens(self.model, ids), ids, self.token_text, c.prompt_len)
        c.job.emit(("done", c.index, reason, c.generated, routing))

    def _drop_cancelled(self) -> None:
        for c in self._rows:
            if c.job.cancelled.is_set() and c.finish_reason is None:
                c.finish_reason = "cancelled"
        self._keep_live_rows()

    def _keep_live_rows(self) -> None:
        live = [i for i, c in enumerate(self._rows) if c.finish_reason is None]
        if len(live) == len(self._rows):
            return
        if not live:
            self._rows, self._state = [], None
            return
        assert self._state is not None
        self._state = select_rows(self._state, live)
        self._rows = [self._rows[i] for i in live]

    def _route(self, ids: list[int], future: Future) -> None:
        try:
            future.set_result(routing_json(trace_tokens(self.model, ids), ids, self.token_text, len(ids)))
        except Exception as err:
            future.set_exception(err)

    def _fail_waiting(self) -> None:
        with self._cond:
            jobs: dict[int, Job] = {id(c.job): c.job for c in [*self._waiting, *self._rows]}
            self._waiting.clear()
        for job in jobs.values():
            job.emit(("error", "the server shut down before this request finished"))
        for _, future in self._routes:
            future.set_exception(ApiError(503, "the server shut down", code="shutting_down"))

    def stats(self) -> dict[str, Any]:
        return {"queue_depth": self.queue_depth(), "active_rows": self.active_rows(),
                "peak_rows": self.peak_rows, "rows_independent": self.rows_independent,
                "max_batch": self.max_rows}
