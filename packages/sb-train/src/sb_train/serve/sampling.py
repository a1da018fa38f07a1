"""One completion choice's token choice and text: per-row sampling (temperature, top-k, top-p, own generator)
and the text seen so far with stop strings and incomplete characters held back while streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

REPLACEMENT = "\ufffd"  # what a decoder writes for the bytes of a character that is not complete yet


def sample_token(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from one row of logits (V,). Temperature 0 is greedy (argmax, as
    :func:`sb_model.generation.sample_next`); otherwise softmax(logits / temperature) restricted to the
    ``top_k`` largest and then to the smallest set whose probability reaches ``top_p``, drawn with
    ``generator`` (one per choice, so batch mates never change a seeded choice's draws)."""
    if temperature == 0:
        return int(logits.argmax())
    z = logits.float() / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of the more likely tokens
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class CompletionText:
    """The text of one choice as its tokens arrive. :meth:`push` returns the text that is safe to show now:
    a stop string ends the text before it; a tail that may still become a stop string, or that holds an
    incomplete character, waits for the next token."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self.stops = tuple(stops)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0

    def push(self, token: int) -> tuple[str, bool]:
        """Add ``token``; returns (new text to emit, whether a stop string ended the choice)."""
        self.ids.append(token)
        full = self._decode(self.ids)
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = full[: min(hits)]
            return self._advance(len(self.text)), True
        self.text = full
        safe = len(full.rstrip(REPLACEMENT))
        hold = max((_prefix_tail(full[:safe], stop) for stop in self.stops), default=0)
        return self._advance(max(safe - hold, self.emitted)), False

    def flush(self) -> str:
        """The text held back so far (the choice ended for another reason than a stop string)."""
        return self._advance(len(self.text))

    def _advance(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return delta


def _prefix_tail(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
