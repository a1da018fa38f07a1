"""The server's counters and their Prometheus text exposition (``GET /metrics``).

Thread-safe: the HTTP handlers and the batching worker both write. Latency percentiles are over the last
``window`` finished completion requests; tokens/s over the last ``rate_window_s`` seconds."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable


class ServerMetrics:
    def __init__(self, window: int = 1024, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()  # (endpoint, status) -> count
        self._latencies: deque[float] = deque(maxlen=window)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._generated = 0
        self._prompt = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent decode steps
        self._rate_window_s = rate_window_s
        self._started = time.monotonic()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def request_done(self, endpoint: str, status: str, latency_s: float | None = None) -> None:
        with self._lock:
            self._requests[(endpoint, status)] += 1
            if latency_s is not None:
                self._latencies.append(latency_s)
                self._latency_sum += latency_s
                self._latency_count += 1

    def tokens(self, generated: int, prompt: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._generated += generated
            self._prompt += prompt
            if generated:
                self._recent.append((now, generated))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self._rate_window_s:
                self._recent.popleft()
            span = min(self._rate_window_s, now - self._started)
            return sum(n for _, n in self._recent) / span if span > 0 else 0.0

    def request_count(self, endpoint: str, status: str) -> int:
        with self._lock:
            return self._requests[(endpoint, status)]

    def render(self) -> str:
        """Prometheus text format 0.0.4."""
        rate = self.tokens_per_second()
        with self._lock:
            lines = ["# HELP sb_serve_requests_total Finished requests by endpoint and outcome.",
                     "# TYPE sb_serve_requests_total counter"]
            for (endpoint, status), n in sorted(self._requests.items()):
                lines.append(f'sb_serve_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += ["# HELP sb_serve_generated_tokens_total Tokens generated for completions.",
                      "# TYPE sb_serve_generated_tokens_total counter",
                      f"sb_serve_generated_tokens_total {self._generated}",
                      "# HELP sb_serve_prompt_tokens_total Prompt tokens read for completions.",
                      "# TYPE sb_serve_prompt_tokens_total counter",
                      f"sb_serve_prompt_tokens_total {self._prompt}",
                      f"# HELP sb_serve_tokens_per_second Generated tokens per second over the last "
                      f"{self._rate_window_s:g} s.",
                      "# TYPE sb_serve_tokens_per_second gauge",
                      f"sb_serve_tokens_per_second {rate:.3f}",
                      "# HELP sb_serve_request_latency_seconds Completion latency, request in to last token "
                      "out (quantiles over the last finished requests).",
                      "# TYPE sb_serve_request_latency_seconds summary"]
            ordered = sorted(self._latencies)
            for q in (0.5, 0.95, 0.99):
                value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
                lines.append(f'sb_serve_request_latency_seconds{{quantile="{q}"}} {value:.6f}')
            lines += [f"sb_serve_request_latency_seconds_sum {self._latency_sum:.6f}",
                      f"sb_serve_request_latency_seconds_count {self._latency_count}"]
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
