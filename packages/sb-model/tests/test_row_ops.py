"""The dispatch's row gathers (gather-based backward) and index_select_rows (ATen index_add backward, a custom
op under torch.compile) give exactly the values and gradients of plain index_select/masking."""

import pytest
import torch

from sb_model.bank.dispatch import (
    build_dispatch,
    capacity_for,
    combine_rows,
    dispatch_rows,
    index_add_rows,
    index_select_rows,
    is_bijection,
    position_major_priority,
)


def _dispatch(N: int, k: int, E: int, capacity: int | None, align: int, dead: int | None = None):
    g = torch.Generator().manual_seed(N + k + E + align)
    scores = torch.randn(N, E, generator=g)
    live = torch.ones(E, dtype=torch.bool)
    if dead is not None:
        live[dead:] = False
        scores[:, dead:] = float("-inf")
    idx = scores.topk(k, dim=-1).indices
    valid = live[idx]
    prio = position_major_priority(1, N, k, torch.device("cpu"))
    return build_dispatch(idx, valid, prio, E, capacity=capacity, align=align)


@pytest.mark.parametrize(
    ("k", "capacity_factor", "align", "dead"),
    [(1, None, 1, None), (2, None, 1, None), (2, 0.6, 1, None), (1, None, 4, None), (3, None, 1, 2)],
)
def test_dispatch_and_combine_match_masked_index_select(k, capacity_factor, align, dead):
    N, E, d = 37, 4, 5
    cap = capacity_for(N, k, E, capacity_factor)
    disp = _dispatch(N, k, E, cap, align, dead)
    bij = is_bijection(k, cap, align) and dead is None
    assert disp.row_used.sum() == disp.served.sum()
    assert (disp.row_token == disp.row_choice // k).all()
    served_flat = disp.served.reshape(-1)
    used_rows = disp.row_used.nonzero().squeeze(-1)
    assert (disp.dest.reshape(-1)[disp.row_choice[disp.row_used]] == used_rows).all()
    assert served_flat[disp.row_choice[disp.row_used]].all()

    x = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(disp.row_token.numel(), d, dtype=torch.float64)  # stands in for the experts
    upstream = torch.randn(N * k, d, dtype=torch.float64)

    def ours(x):
        rows = dispatch_rows(x, disp, bij)
        return combine_rows(rows * w, disp, bij)

    def plain(x):
        rows = torch.where(disp.row_used[:, None], x.index_select(0, disp.row_token), 0.0)
        picked = (rows * w).index_select(0, disp.dest.reshape(-1))
        return torch.where(served_flat[:, None], picked, 0.0)

    out = ours(x)
    (gx,) = torch.autograd.grad(out, x, upstream)
    ref = plain(x)
    (gref,) = torch.autograd.grad(ref, x, upstream)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, gref)
    assert torch.autograd.gradcheck(ours, (x,), fast_mode=True)


def test_bijection_only_for_dropless_top1_without_padding():
    assert is_bijection(1, None, 1)
    assert not is_bijection(2, None, 1)
    assert not is_bijection(1, 10, 1)
    assert not is_bijection(1, None, 16)


def test_index_select_rows_sums_repeated_rows():
    src = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 0, 0, 5, 2, 5, 0])
    out = index_select_rows(src, index)
    torch.testing.assert_close(out, src.detach()[index])
    g = torch.randn(7, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, src, g)
    (ref,) = torch.autograd.grad(src.index_select(0, index), src, g)
    torch.testing.assert_close(grad, ref)
    torch.testing.assert_close(index_add_rows(g, index, 6), ref)
    assert torch.autograd.gradcheck(lambda s: index_select_rows(s, index), (src,), fast_mode=True)


def test_index_select_rows_traces_fullgraph():
    src = torch.randn(8, 4, requires_grad=True)
    index = torch.tensor([1, 1, 7, 3, 1])
    fn = torch.compile(
        lambda s, i: index_select_rows(s, i).square().sum(), fullgraph=True, backend="aot_eager"
    )
    fn(src, index).backward()
    ref = torch.zeros(8, 4).index_add_(0, index, 2 * src.detach()[index])
    torch.testing.assert_close(src.grad, ref)
