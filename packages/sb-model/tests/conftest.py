"""Shared fixtures: tiny banks and an independent, plain transcription of the bank's math."""

from __future__ import annotations

import pytest
import torch

import sb_model as sm

EOD = 50256


def _tokens(B: int, T: int, seed: int = 0, doc_every: int = 17) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, 1000, (B, T), generator=g)
    tok[:, doc_every::doc_every] = EOD
    return tok


@pytest.fixture
def tokens():
    return _tokens


@pytest.fixture
def make_bank():
    def make(dtype=torch.float32, seed: int = 0, **overrides) -> sm.SharedExpertBank:
        kw = dict(model_dim=16, num_layers=3, num_experts=4, ffn_hidden=32, topk=1)
        kw.update(overrides)
        torch.manual_seed(seed)
        bank = sm.SharedExpertBank(sm.BankConfig(**kw), dtype=dtype)
        with torch.no_grad():  # non-trivial experts and adapters (w2 is zero-initialised, adapters are 1/0)
            bank.w2.normal_(0.0, 0.2)
            bank.router_w.normal_(0.0, 0.5)
            bank.router_b.normal_(0.0, 0.1)
            if bank.adapter_scale is not None:
                bank.adapter_scale.normal_(1.0, 0.2)
                bank.adapter_bias.normal_(0.0, 0.1)
        return bank

    return make


def reference_bank_forward(
    bank: sm.SharedExpertBank,
    x,
    layer_idx,
    flags,
    ema_fwd=None,
    ema_rev=None,
    *,
    temperature=1.0,
    logit_cap=0.0,
    active=None,
):
    """Dense transcription: concat features, one matmul, temperature, hard cap, mask, softmax, top-k, every
    expert on every token, gate by raw probability."""
    cfg = bank.config
    B, T, d = x.shape
    feats = [x]
    if cfg.use_forward_ema:
        feats.append(ema_fwd)
    if cfg.use_reverse_ema:
        feats.append(ema_rev)
    feats.append(flags.to(x.dtype))
    rin = torch.cat(feats, dim=-1).reshape(B * T, -1)
    logits = (rin @ bank.router_w[layer_idx].t() + bank.router_b[layer_idx]).double()
    logits = logits / temperature
    if logit_cap > 0:
        logits = logits.clamp(-logit_cap, logit_cap)
    E = cfg.num_experts
    live = torch.ones(E, dtype=torch.bool) if active is None else active.clone()
    logits = logits.masked_fill(~live, float("-inf"))
    probs = torch.softmax(logits, -1)
    k = min(cfg.topk, int(live.sum()))
    vals, idx = probs.topk(k, -1)
    if int(live.sum()) == 1:
        vals = torch.ones_like(vals)
    xs = x.reshape(B * T, d).double()
    out = torch.zeros_like(xs)
    slot = cfg.adapter_slot(layer_idx)
    for e in range(E):
        u = xs
        if bank.adapter_scale is not None:
            u = u * bank.adapter_scale[slot, e].double() + bank.adapter_bias[slot, e].double()
        ye = torch.relu(u @ bank.w1[e].double().t()).square() @ bank.w2[e].double().t()
        for r in range(k):
            sel = (idx[:, r] == e).double()[:, None]
            out = out + sel * vals[:, r : r + 1] * ye
    return out.reshape(B, T, d), probs, idx


@pytest.fixture
def reference_forward():
    return reference_bank_forward
