"""Generation from a :class:`~sb_model.gpt.GPT`: the KV-cached decode step and its state, and sampling.

Decoding one token at a time keeps, per layer, the attention keys/values and, for the routers' EMA context
features (which read earlier tokens of the document), the input history of each EMA group's first layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sb_model.attention import KVCache
from sb_model.attention_masks import decode_masks
from sb_model.bank.bank import SharedExpertBank
from sb_model.bank.features import document_starts
from sb_model.bank.router import RoutingContext, ema_features, ema_group
from sb_model.bank.trace import RoutingTrace


class RouterFeatureHistory:
    """Inputs of each EMA group's first layer so far. Before the bank runs that layer on new positions,
    :meth:`prime` computes the group's EMA features over the whole history and stores those of the new
    positions in the routing context, where the bank finds them (it then skips its own computation)."""

    def __init__(self) -> None:
        self.inputs: dict[int, Tensor] = {}
        self.doc_start: Tensor | None = None  # (B, T_total) document starts of all tokens so far

    def prime(self, bank: SharedExpertBank, layer_idx: int, h: Tensor, ctx: RoutingContext) -> None:
        cfg = bank.config
        group = ema_group(cfg, layer_idx)
        if not (cfg.use_forward_ema or cfg.use_reverse_ema) or layer_idx != group:
            return
        prev = self.inputs.get(group)
        hist = h if prev is None else torch.cat([prev, h], dim=1)
        self.inputs[group] = hist
        if self.doc_start is None or self.doc_start.shape[:2] != hist.shape[:2]:
            raise RuntimeError("RouterFeatureHistory.doc_start must cover every token decoded so far")
        n = h.shape[1]
        fwd, rev = ema_features(
            cfg, hist, bank.ema_alpha_fwd[group], bank.ema_alpha_rev[group], self.doc_start
        )
        ctx.ema_cache[group] = (None if fwd is None else fwd[:, -n:], None if rev is None else rev[:, -n:])


class LayerCache:
    """What one layer keeps between decoding calls."""

    def __init__(self, kv: KVCache | None, features: RouterFeatureHistory | None) -> None:
        self.kv = kv
        self.features = features


class DecodeState:
    """All layers' caches plus the tokens decoded so far (B, T_total)."""

    def __init__(
        self, layers: list[LayerCache], tokens: Tensor, features: RouterFeatureHistory | None
    ) -> None:
        self.layers = layers
        self.tokens = tokens
        self.features = features

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def new_decode_state(model, batch: int, max_len: int) -> DecodeState:
    """Empty caches for decoding up to ``max_len`` positions per row."""
    cfg = model.config
    if max_len > cfg.max_seq_len:
        raise ValueError(f"decoding {max_len} positions exceeds max_seq_len={cfg.max_seq_len}")
    dev, dt = model.embed.weight.device, model.embed.weight.dtype
    features = RouterFeatureHistory() if model.bank is not None else None
    layers = [
        LayerCache(
            None
            if b.attn is None
            else KVCache(batch, cfg.num_heads, cfg.head_dim, max_len, dtype=dt, device=dev),
            features,
        )
        for b in model.blocks
    ]
    return DecodeState(layers, torch.zeros(batch, 0, dtype=torch.long, device=dev), features)


@torch.no_grad()
def decode(
    model, new_tokens: Tensor, state: DecodeState, routing_trace: RoutingTrace | None = None
) -> Tensor:
    """Run the new positions ``new_tokens`` (B, n) against the cached past; returns their logits
    (B, n, vocab_size). Uses the explicit-mask SDPA path (the masks are rectangular). A ``routing_trace``
    gets the new positions' choices appended to what it holds."""
    cfg = model.config
    offset = state.length
    tokens = torch.cat([state.tokens, new_tokens.to(state.tokens.dtype)], dim=1)
    state.tokens = tokens
    masks = decode_masks(tokens, offset, cfg.eod_token_id, model.window_blocks, cfg.block_size)
    if state.features is not None:
        state.features.doc_start = document_starts(tokens, cfg.eod_token_id)
    flags = model.router_flags(tokens)[:, offset:]
    x, _ = model.run_blocks(new_tokens, masks, flags, state.layers, trace=routing_trace)
    return model.head(x)[..., : cfg.vocab_size]


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
        state = new_decode_state(model, tokens.shape[0], total) if use_cache else None
        new = tokens
        for _ in range(max_new_tokens):
            if state is not None:
                logits = decode(model, new, state)[:, -1]
            else:
                logits = model(tokens, attention="sdpa").logits[:, -1]
            nxt = sample_next(logits, temperature, top_k, generator)[:, None]
            tokens = torch.cat([tokens, nxt], dim=1)
            new = nxt
    finally:
        model.train(was_training)
    return tokens[0] if squeeze else tokens


# ---------------------------------------------------------------------------------------------- batch rows
def select_rows(state: DecodeState, rows: Tensor | list[int]) -> DecodeState:
    """A state holding only ``rows`` of ``state``, in that order (a server drops finished requests' rows and
    their caches with it). The caches are copied: the old state's memory is freed when it is dropped."""
    index = torch.as_tensor(rows, dtype=torch.long, device=state.tokens.device)
    features = None
    if state.features is not None:
        features = RouterFeatureHistory()
        features.inputs = {g: h.index_select(0, index) for g, h in state.features.inputs.items()}
        if state.features.doc_start is not None:
            features.doc_start = state.features.doc_start.index_select(0, index)
    layers = []
    for layer in state.layers:
        kv = None
        if layer.kv is not None:
            kv = KVCache.__new__(KVCache)
            kv.k, kv.v = layer.kv.k.index_select(0, index), layer.kv.v.index_select(0, index)
            kv.length = layer.kv.length
        layers.append(LayerCache(kv, features if layer.features is not None else None))
    return DecodeState(layers, state.tokens.index_select(0, index), features)


def concat_rows(states: list[DecodeState]) -> DecodeState:
    """One state whose rows are those of ``states`` in order. All must have decoded the same number of
    positions; the key/value capacity is the largest of theirs."""
    if not states:
        raise ValueError("concat_rows needs at least one state")
    lengths = {s.length for s in states}
    if len(lengths) != 1:
        raise ValueError(f"rows join only at the same decoded length (got lengths {sorted(lengths)})")
    if len(states) == 1:
        return states[0]
    first = states[0]
    features = None
    if first.features is not None:
        features = RouterFeatureHistory()
        features.inputs = {
            g: torch.cat([s.features.inputs[g] for s in states if s.features is not None])
            for g in first.features.inputs
        }
        if first.features.doc_start is not None:
            features.doc_start = torch.cat([s.features.doc_start for s in states if s.features is not None])
    layers = []
    for i, layer in enumerate(first.layers):
        kv = None
        if layer.kv is not None:
            caches = [s.layers[i].kv for s in states]
            capacity = max(c.k.shape[2] for c in caches)
            kv = KVCache.__new__(KVCache)
            kv.k = torch.cat([_with_capacity(c.k, capacity) for c in caches])
            kv.v = torch.cat([_with_capacity(c.v, capacity) for c in caches])
            kv.length = layer.kv.length
        layers.append(LayerCache(kv, features if layer.features is not None else None))
    return DecodeState(layers, torch.cat([s.tokens for s in states]), features)


def _with_capacity(cache: Tensor, capacity: int) -> Tensor:
    """(B, H, max_len, D) cache grown with zeros to ``capacity`` positions."""
    extra = capacity - cache.shape[2]
    return cache if extra == 0 else torch.nn.functional.pad(cache, (0, 0, 0, extra))
