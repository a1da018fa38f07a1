"""Document-causal sliding-window masks: the token rule and the reference-style BlockMask."""

import math
import warnings

import pytest
import torch

from sb_model.attention_masks import (
    FLEX_AVAILABLE,
    block_layout,
    dense_attention_mask,
    document_causal_window_mask,
    document_ids,
    flex_attention,
    flex_block_mask,
    long_window_layers,
)

EOD = 0


def block_mask_to_dense(block_mask, seq_len: int) -> torch.Tensor:
    """Expand a BlockMask into its (B, 1, T, T) token mask (kept blocks, with mask_mod on partial blocks).
    Materialises T² booleans."""
    partial = block_mask.kv_num_blocks, block_mask.kv_indices
    full = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
    B = partial[0].shape[0]
    bs = block_mask.BLOCK_SIZE[1]
    nb = math.ceil(seq_len / bs)

    def kept(num: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
        rank = torch.arange(ind.shape[-1], device=ind.device)
        sel = rank < num[..., None]
        dense = torch.zeros(*ind.shape[:-1], nb, dtype=torch.bool, device=ind.device)
        return dense.scatter_(-1, ind.long(), sel)  # (B, H, NBq, NBk)

    part = kept(*partial)[:, :1]
    full_b = kept(*full)[:, :1] if full[0] is not None else torch.zeros_like(part)
    expand = lambda m: m.repeat_interleave(bs, -2).repeat_interleave(bs, -1)[..., :seq_len, :seq_len]  # noqa: E731
    q = torch.arange(seq_len)
    b = torch.arange(B)
    token = block_mask.mask_mod(b[:, None, None, None], 0, q[None, None, :, None], q[None, None, None, :])
    return (expand(part) & token) | expand(full_b)


def _tokens(B, T, eods, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(1, 50, (B, T), generator=g)
    for b, t in eods:
        tok[b, t] = EOD
    return tok


def _naive_mask(tok, w, bs):
    """Per-pair loops straight from the definition (EOD opens the next document)."""
    B, T = tok.shape
    out = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        doc = [0] * T
        d = 0
        for t in range(T):
            d += int(tok[b, t] == EOD)
            doc[t] = d
        for q in range(T):
            for k in range(q + 1):
                out[b, 0, q, k] = doc[q] == doc[k] and (q // bs - k // bs) < max(w, 1)
    return out


CASES = [
    # (B, T, block, EOD positions)
    (1, 64, 8, []),
    (2, 64, 8, [(0, 0), (0, 13), (0, 40), (1, 8), (1, 9), (1, 63)]),
    (2, 96, 16, [(0, 47), (0, 48), (1, 5), (1, 70)]),
]


@pytest.mark.parametrize("B,T,bs,eods", CASES)
@pytest.mark.parametrize("w", [0, 1, 2, 3, 5, 100])
def test_dense_mask_matches_definition(B, T, bs, eods, w):
    tok = _tokens(B, T, eods)
    docs = document_ids(tok, EOD)
    assert torch.equal(dense_attention_mask(docs, torch.tensor(w), bs), _naive_mask(tok, w, bs))


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="FlexAttention not in this torch")
@pytest.mark.parametrize("B,T,bs,eods", CASES)
@pytest.mark.parametrize("w", [0, 1, 2, 3, 5, 100])
def test_block_mask_equals_dense_mask(B, T, bs, eods, w):
    tok = _tokens(B, T, eods)
    docs = document_ids(tok, EOD)
    bm = flex_block_mask(block_layout(docs, bs), docs, torch.tensor(w), bs)
    assert torch.equal(block_mask_to_dense(bm, T), _naive_mask(tok, w, bs))


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="FlexAttention not in this torch")
def test_block_lists_alone_give_the_window():
    """The kept block lists (without the token rule's window term) already cover exactly the window's blocks:
    the reference's partial/full clipping is the sliding window at block level."""
    tok = _tokens(2, 128, [(0, 20), (0, 75), (1, 64), (1, 100)])
    bs = 16
    docs = document_ids(tok, EOD)
    layout = block_layout(docs, bs)
    nb = 128 // bs
    for w in range(0, 9):
        bm = flex_block_mask(layout, docs, torch.tensor(w), bs)
        kept = torch.zeros(2, nb, nb, dtype=torch.bool)
        for num, idx in ((bm.kv_num_blocks, bm.kv_indices), (bm.full_kv_num_blocks, bm.full_kv_indices)):
            for b in range(2):
                for qb in range(nb):
                    kept[b, qb, idx[b, 0, qb, : num[b, 0, qb]].long()] = True
        dense = dense_attention_mask(docs, w, bs)[:, 0]
        needed = dense.view(2, nb, bs, nb, bs).any(dim=(2, 4))
        assert torch.equal(kept & needed, needed), w  # every needed block is kept
        qb = torch.arange(nb)
        in_window = (qb[:, None] - qb[None, :] < max(w, 1)) & (qb[:, None] >= qb[None, :])
        assert not (kept & ~in_window).any(), w  # nothing outside the window is kept


def test_mask_is_causal_in_the_tokens():
    """Row q of the mask depends only on tokens <= q."""
    tok = _tokens(1, 64, [(0, 10), (0, 30)])
    ref = dense_attention_mask(document_ids(tok, EOD), 3, 8)
    for t in (5, 20, 31, 50):
        alt = tok.clone()
        alt[0, t + 1 :] = EOD  # rewrite the future, including document boundaries
        got = dense_attention_mask(document_ids(alt, EOD), 3, 8)
        assert torch.equal(got[..., : t + 1, : t + 1], ref[..., : t + 1, : t + 1])


def test_rectangular_rows_equal_rows_of_the_square_mask():
    tok = _tokens(2, 48, [(0, 7), (1, 30)])
    docs = document_ids(tok, EOD)
    pos = torch.arange(48)
    rows = document_causal_window_mask(docs[:, 40:], docs, pos[40:], pos, torch.tensor(2), 8)
    assert torch.equal(rows, dense_attention_mask(docs, 2, 8)[:, :, 40:])


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="FlexAttention not in this torch")
def test_flex_attention_agrees_with_sdpa_dense_mask():
    tok = _tokens(2, 64, [(0, 9), (0, 33), (1, 50)])
    docs = document_ids(tok, EOD)
    q, k, v = (torch.randn(2, 2, 64, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    bs = 16
    layout = block_layout(docs, bs)
    for w in (1, 2, 4):
        bm = flex_block_mask(layout, docs, torch.tensor(w), bs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused
            y_flex = flex_attention(q, k, v, block_mask=bm, scale=0.12)
        y_sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=dense_attention_mask(docs, w, bs), scale=0.12
        )
        torch.testing.assert_close(y_flex, y_sdpa, atol=1e-5, rtol=1e-5)


def test_flex_path_needs_whole_blocks():
    with pytest.raises(ValueError, match="multiple of block_size"):
        block_layout(torch.zeros(1, 100, dtype=torch.int32), 16)


def test_long_window_layers_rule():
    assert long_window_layers(28) == (0, 4, 8, 12, 16, 20, 24)
    assert long_window_layers(32) == tuple(range(0, 32, 4))
    assert long_window_layers(12) == (0, 3, 6, 9)
    assert long_window_layers(3) == (0, 1, 2)
