"""Autoregressive sampling from a :class:`~sb_model.gpt.GPT`, with or without a KV cache."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 is greedy; top_k keeps the k largest logits."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature}); 0 means greedy")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (got {top_k})")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model,
    prompt_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    *,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend ``prompt_ids`` ((T,) or (B, T) integer ids) by ``max_new_tokens`` sampled tokens; returns the
    prompt and the continuation, same rank as the input.

    With ``use_cache`` the prompt runs once and each new token runs alone against the cached keys/values (and
    the router EMA history); without it every step reruns the whole sequence. Both give the same tokens. The
    model runs in eval mode (no Gumbel noise) and is put back in its previous mode afterwards."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
    squeeze = prompt_ids.dim() == 1
    tokens = (prompt_ids[None] if squeeze else prompt_ids).long()
    if tokens.dim() != 2 or tokens.shape[1] < 1:
        raise ValueError(
            f"prompt_ids must have shape (T,) or (B, T) with T >= 1, got {tuple(prompt_ids.shape)}"
        )
    total = tokens.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
            f"max_seq_len={model.config.max_seq_len}"
        )
    was_training = model.training
    model.eval()
    try:
        state = model.new_decode_state(tokens.shape[0], total) if use_cache else None
        new = tokens
        for _ in range(max_new_tokens):
            if state is not None:
                logits = model.decode(new, state)[:, -1]
            else:
                logits = model(tokens, attention="sdpa").logits[:, -1]
            nxt = sample_next(logits, temperature, top_k, generator)[:, None]
            tokens = torch.cat([tokens, nxt], dim=1)
            new = nxt
    finally:
        model.train(was_training)
    return tokens[0] if squeeze else tokens
