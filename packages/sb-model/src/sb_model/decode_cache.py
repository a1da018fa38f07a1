"""State for incremental (KV-cached) decoding: per-layer keys/values, and the bank-input history that the
router's EMA context features need (they read earlier tokens of the document, so decoding one token at a time
must keep the EMA base layers' inputs)."""

from __future__ import annotations

import torch
from torch import Tensor

from sb_model.attention import KVCache
from sb_model.bank import RoutingContext, SharedExpertBank
from sb_model.ema import causal_reverse_snapshot, document_ema, reference_forward_ema


class RouterFeatureHistory:
    """Inputs of each EMA base layer so far. Before the bank runs a base layer on new positions, :meth:`prime`
    computes the EMA features over the whole history and stores those of the new positions in the routing
    context, where the bank finds them (it then skips its own computation on the short input)."""

    def __init__(self) -> None:
        self.inputs: dict[int, Tensor] = {}
        self.doc_start: Tensor | None = None  # (B, T_total) document starts of all tokens so far

    def prime(self, bank: SharedExpertBank, layer_idx: int, h: Tensor, ctx: RoutingContext) -> None:
        cfg = bank.config
        if not (cfg.use_forward_ema or cfg.use_reverse_ema):
            return
        stride = cfg.layer_stride
        base = (layer_idx // stride) * stride
        if layer_idx != base:
            return
        prev = self.inputs.get(base)
        hist = h if prev is None else torch.cat([prev, h], dim=1)
        self.inputs[base] = hist
        if self.doc_start is None or self.doc_start.shape[:2] != hist.shape[:2]:
            raise RuntimeError("RouterFeatureHistory.doc_start must cover every token decoded so far")
        n = h.shape[1]
        fwd = rev = None
        if cfg.use_forward_ema:
            fwd = reference_forward_ema(hist, bank.ema_alpha_fwd[base], cfg.ema_window_fwd)[:, -n:]
        if cfg.use_reverse_ema:
            alpha = bank.ema_alpha_rev[base]
            if cfg.reverse_ema_mode == "snapshot":
                rev = causal_reverse_snapshot(hist, alpha, self.doc_start, cfg.ema_window_rev)[:, -n:]
            else:
                rev = document_ema(hist, alpha, self.doc_start)[:, -n:]
        ctx.ema_cache[base] = (fwd, rev)


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
