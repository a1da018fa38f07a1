"""Causal self-attention: parameters and init, the math against a direct transcription, batching,
FlexAttention
vs SDPA, and the KV cache."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sb_model.attention import CausalSelfAttention, KVCache
from sb_model.attention_masks import (
    FLEX_AVAILABLE,
    block_layout,
    dense_attention_mask,
    document_ids,
    flex_block_mask,
)
from sb_model.rotary import Rotary

D_MODEL, HEAD = 32, 16


def _attn(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    attn = CausalSelfAttention(D_MODEL, HEAD, dtype=dtype)
    with torch.no_grad():  # a non-zero output projection so the tests see something
        attn.qkvo_w[3].normal_(0, 0.2)
    return attn


def _inputs(B=2, T=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D_MODEL, generator=g)
    ve = torch.randn(B, T, D_MODEL, generator=g)
    tok = torch.randint(1, 20, (B, T), generator=g)
    tok[0, 17] = 0
    tok[-1, 30] = 0
    return x, ve, tok


def test_fused_weight_shape_and_init():
    attn = CausalSelfAttention(896, 128)
    assert attn.qkvo_w.shape == (4, 896, 896) and attn.num_heads == 7
    assert torch.all(attn.qkvo_w[3] == 0)  # zero-initialised output projection
    bound = math.sqrt(3) * 0.5 / math.sqrt(896)
    w = attn.qkvo_w[:3]
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    x = torch.randn(1, 8, 896)
    mask = dense_attention_mask(torch.zeros(1, 8, dtype=torch.int32), 1, 128)
    out = attn(x, None, torch.tensor([0.5, 0.5]), Rotary(128, 8), mask)
    assert torch.all(out == 0)  # the layer starts as the identity in the residual stream


def test_heads_must_divide_model_dim():
    with pytest.raises(ValueError, match="multiple of head_dim"):
        CausalSelfAttention(30, 16)


def _direct(attn, x, ve, lambdas, tok, w, bs=16):
    """Transcription of docs/design/model.md (attention), one head at a time, with an explicit softmax."""
    B, T, d = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    W = attn.qkvo_w
    rot = Rotary(Dh, T)
    q = (x @ W[0].t()).view(B, T, H, Dh)
    k = (x @ W[1].t()).view(B, T, H, Dh)
    v = (x @ W[2].t()).view(B, T, H, Dh)
    rms = lambda t: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps)  # noqa: E731
    q, k = rot(rms(q)), rot(rms(k))
    v = lambdas[0] * rms(v) + lambdas[1] * ve.view(B, T, H, Dh)
    mask = dense_attention_mask(document_ids(tok, 0), w, bs)[:, 0]
    out = torch.zeros(B, T, H, Dh)
    for h in range(H):
        s = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h]) * 0.12
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        out[:, :, h] = p @ v[:, :, h]
    return out.reshape(B, T, d) @ W[3].t()


def test_matches_direct_transcription():
    attn = _attn()
    x, ve, tok = _inputs()
    lam = torch.tensor([0.7, 0.3])
    mask = dense_attention_mask(document_ids(tok, 0), 2, 16)
    got = attn(x, ve, lam, Rotary(HEAD, 48), mask)
    torch.testing.assert_close(got, _direct(attn, x, ve, lam, tok, 2), atol=1e-5, rtol=1e-4)


def test_value_embedding_lambdas():
    attn = _attn()
    x, ve, tok = _inputs()
    mask = dense_attention_mask(document_ids(tok, 0), 3, 16)
    rot = Rotary(HEAD, 48)
    base = attn(x, None, torch.tensor([1.0, 0.0]), rot, mask)
    # λ_ve = 0 ignores the value embedding; λ_v scales linearly (v enters linearly)
    torch.testing.assert_close(attn(x, ve, torch.tensor([1.0, 0.0]), rot, mask), base)
    torch.testing.assert_close(
        attn(x, None, torch.tensor([2.0, 0.0]), rot, mask), 2 * base, rtol=1e-5, atol=1e-6
    )


def test_batch_rows_are_independent():
    attn = _attn()
    x, ve, tok = _inputs(B=3)
    lam = torch.tensor([0.5, 0.5])
    rot = Rotary(HEAD, 48)
    docs = document_ids(tok, 0)
    full = attn(x, ve, lam, rot, dense_attention_mask(docs, 2, 16))
    for b in range(3):
        one = attn(x[b : b + 1], ve[b : b + 1], lam, rot, dense_attention_mask(docs[b : b + 1], 2, 16))
        torch.testing.assert_close(full[b : b + 1], one, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="FlexAttention not in this torch")
@pytest.mark.parametrize("w", [1, 2])
def test_flex_and_sdpa_paths_agree(w):
    attn = _attn()
    x, ve, tok = _inputs()
    lam = torch.tensor([0.6, 0.4])
    rot = Rotary(HEAD, 48)
    docs = document_ids(tok, 0)
    bm = flex_block_mask(block_layout(docs, 16), docs, torch.tensor(w), 16)
    with warnings.catch_warnings(), torch.no_grad():  # FlexAttention has no CPU backward
        warnings.simplefilter("ignore")
        y_flex = attn(x, ve, lam, rot, bm)
    with torch.no_grad():
        y_sdpa = attn(x, ve, lam, rot, dense_attention_mask(docs, w, 16))
    torch.testing.assert_close(y_flex, y_sdpa, atol=1e-5, rtol=1e-5)


def test_kv_cache_reproduces_full_sequence():
    attn = _attn()
    x, ve, tok = _inputs(B=2, T=40)
    lam = torch.tensor([0.5, 0.5])
    rot = Rotary(HEAD, 40)
    docs = document_ids(tok, 0)
    full = attn(x, ve, lam, rot, dense_attention_mask(docs, 2, 16))
    cache = KVCache(2, attn.num_heads, HEAD, 40, dtype=torch.float32, device="cpu")
    pos = torch.arange(40)
    from sb_model.attention_masks import document_causal_window_mask

    outs = []
    for a, b in ((0, 25), (25, 26), (26, 40)):
        m = document_causal_window_mask(docs[:, a:b], docs[:, :b], pos[a:b], pos[:b], 2, 16)
        outs.append(attn(x[:, a:b], ve[:, a:b], lam, rot, m, cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(torch.zeros(2, 2, 1, HEAD), torch.zeros(2, 2, 1, HEAD))


def test_bfloat16_forward_backward():
    attn = _attn(dtype=torch.bfloat16)
    x, ve, tok = _inputs()
    x = x.bfloat16().requires_grad_()
    mask = dense_attention_mask(document_ids(tok, 0), 2, 16)
    y = attn(x, ve.bfloat16(), torch.tensor([0.5, 0.5]), Rotary(HEAD, 48), mask)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert torch.isfinite(attn.qkvo_w.grad.float()).all() and attn.qkvo_w.grad.abs().sum() > 0
    assert F.mse_loss(y.float(), _direct(attn.float(), x.detach().float(), ve, [0.5, 0.5], tok, 2)) < 1e-3
