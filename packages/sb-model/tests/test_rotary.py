"""Rotary embeddings: the reference's frequency layout and the rotation's properties."""

import math

import pytest
import torch

from sb_model.rotary import Rotary, apply_rotary, rotary_frequencies


def test_frequency_layout_matches_reference_formula():
    f = rotary_frequencies(128)
    assert f.shape == (64,)
    expected = torch.tensor([(1 / 1024) ** (i / 31) for i in range(32)], dtype=torch.float32)
    torch.testing.assert_close(f[:32], expected)
    assert torch.all(f[32:] == 0)
    assert f[0] == 1.0 and math.isclose(float(f[31]), 1 / 1024, rel_tol=1e-6)


def test_bad_head_dim_is_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        rotary_frequencies(6)


def _x(T=40, H=3, D=16, seed=0):
    return torch.randn(2, T, H, D, generator=torch.Generator().manual_seed(seed))


def test_rotation_preserves_norms_and_position_zero():
    rot = Rotary(16, 64)
    x = _x()
    y = rot(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])  # angle 0 at position 0


def test_zero_frequency_pairs_pass_through_unrotated():
    rot = Rotary(16, 64)
    x = _x()
    y = rot(x)
    n = 16 // 4  # pairs n..2n-1 have zero frequency: dims (n..2n-1) and (2n+n..4n-1)
    torch.testing.assert_close(y[..., n : 2 * n], x[..., n : 2 * n])
    torch.testing.assert_close(y[..., 3 * n :], x[..., 3 * n :])


def test_scores_depend_only_on_relative_position():
    rot = Rotary(16, 128)
    q = _x(T=1, seed=1).expand(2, 100, 3, 16).contiguous()
    k = _x(T=1, seed=2).expand(2, 100, 3, 16).contiguous()
    rq, rk = rot(q), rot(k)
    s = torch.einsum("bthd,bshd->bhts", rq, rk)
    # same offset m - n -> same score
    torch.testing.assert_close(s[..., 10, 3], s[..., 57, 50], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s[..., 90, 90], s[..., 0, 0], rtol=1e-4, atol=1e-5)


def test_offset_equals_slice_of_full_sequence():
    rot = Rotary(16, 64)
    x = _x(T=30)
    full = rot(x)
    torch.testing.assert_close(rot(x[:, 20:], offset=20), full[:, 20:])


def test_matches_explicit_rotation_formula_and_keeps_dtype():
    D, T = 8, 5
    cos_sin = torch.outer(torch.arange(T, dtype=torch.float32), rotary_frequencies(D))
    x = _x(T=T, D=D).to(torch.bfloat16)
    y = apply_rotary(x, cos_sin.cos(), cos_sin.sin())
    assert y.dtype == torch.bfloat16
    xf = x.float()
    x1, x2 = xf[..., :4], xf[..., 4:]
    c, s = cos_sin.cos()[:, None], cos_sin.sin()[:, None]
    ref = torch.cat([x1 * c + x2 * s, -x1 * s + x2 * c], -1)
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=2e-2)


def test_positions_beyond_table_raise_clear_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        Rotary(16, 8)(_x(T=5), offset=4)
