"""The expert-parallel CPU FFN (sb_model.kernels.cpu_parallel_experts) and the OpenMP task runner under it."""

import itertools
import threading
from collections import Counter

import pytest
import torch

from sb_model.bank.experts import choose_expert_impl
from sb_model.kernels.cpu_parallel_experts import expert_ffn_cpu_parallel, plan_tasks
from sb_model.kernels.omp_team import openmp_team_available, run_on_openmp_team


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def reference(x, w1, w2, ends, scale=None, bias=None, gate=None):
    out, start = [], 0
    for e, end in enumerate(ends):
        u = x[start:end]
        if scale is not None:
            u = u * scale[e] + bias[e]
        y = torch.relu(u @ w1[e].t()).square() @ w2[e].t()
        out.append(y if gate is None else y * gate[start:end, None])
        start = end
    return torch.cat(out)


def make_inputs(ends, d=8, h=12, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    E, R = len(ends), ends[-1]

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale + shift).requires_grad_()

    return dict(
        x=rnd(R, d),
        w1=rnd(E, h, d, scale=0.5),
        w2=rnd(E, d, h, scale=0.5),
        scale=rnd(E, d, scale=0.2, shift=1.0),
        bias=rnd(E, d, scale=0.1),
        gate=torch.rand(R, generator=gen, dtype=dtype).requires_grad_(),
    )


def test_plan_tasks_covers_every_row_once_largest_first():
    ends = [3, 3, 40, 45, 100]  # expert 1 is empty, expert 4 has 55 rows > half of 100
    tasks = plan_tasks(ends, 2)
    covered = sorted((a, b) for _, a, b in tasks)
    assert covered[0][0] == 0 and covered[-1][1] == 100
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(covered))
    assert 1 not in {e for e, _, _ in tasks}
    assert [e for e, _, _ in tasks].count(4) == 2  # cut into two chunks of <= 50 rows
    sizes = [b - a for _, a, b in tasks]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) <= 50
    assert plan_tasks(ends, 1) == sorted(
        [(0, 0, 3), (2, 3, 40), (3, 40, 45), (4, 45, 100)], key=lambda t: t[1] - t[2]
    )
    assert plan_tasks([0, 0], 4) == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "ends", [[5, 11, 20, 26], [0, 26, 26, 26], [2, 3, 30, 31]], ids=["balanced", "one-expert", "skewed"]
)
@pytest.mark.parametrize("variant", ["plain", "gated", "adapted"])
def test_forward_and_gradients_match_a_per_expert_loop(ends, threads, variant):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = make_inputs(ends)
        kw = {}
        if variant != "plain":
            kw["gate"] = t["gate"]
        if variant == "adapted":
            kw.update(scale=t["scale"], bias=t["bias"])
        offs = torch.tensor(ends, dtype=torch.int32)
        upstream = torch.randn(ends[-1], 8, dtype=torch.float64)
        leaves = [t["x"], t["w1"], t["w2"], *kw.values()]
        out = expert_ffn_cpu_parallel(t["x"], t["w1"], t["w2"], offs, **kw)
        got = torch.autograd.grad(out, leaves, upstream)
        ref_out = reference(t["x"], t["w1"], t["w2"], ends, **kw)
        want = torch.autograd.grad(ref_out, leaves, upstream)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, ref_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_gradcheck_float64(two_threads):
    ends = [3, 3, 9, 14]  # an empty expert, and expert 2/3 cut into chunks with 2 threads
    t = make_inputs(ends, d=4, h=6)
    offs = torch.tensor(ends, dtype=torch.int32)

    def fn(x, w1, w2, scale, bias, gate):
        return expert_ffn_cpu_parallel(x, w1, w2, offs, scale, bias, gate)

    args = (t["x"], t["w1"], t["w2"], t["scale"], t["bias"], t["gate"])
    assert torch.autograd.gradcheck(fn, args)


def test_results_do_not_depend_on_which_thread_ran_a_task(two_threads):
    ends = [40, 90, 200, 260]
    t = make_inputs(ends, d=16, h=32, dtype=torch.float32)
    offs = torch.tensor(ends, dtype=torch.int32)
    runs = []
    for _ in range(3):
        out = expert_ffn_cpu_parallel(t["x"], t["w1"], t["w2"], offs, t["scale"], t["bias"], t["gate"])
        runs.append((out, *torch.autograd.grad(out.square().sum(), [t["x"], t["w1"], t["scale"], t["gate"]])))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_compiles_fullgraph_and_matches_eager(two_threads):
    ends = [7, 20, 20, 33]
    t = make_inputs(ends, dtype=torch.float32)
    offs = torch.tensor(ends, dtype=torch.int32)

    def fn(x, w1, w2, scale, bias, gate):
        return expert_ffn_cpu_parallel(x, w1, w2, offs, scale, bias, gate).sin().sum()

    args = (t["x"], t["w1"], t["w2"], t["scale"], t["bias"], t["gate"])
    eager = torch.autograd.grad(fn(*args), args)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*args), args)
    for g, w in zip(got, eager, strict=True):
        torch.testing.assert_close(g, w)


def test_inference_mode_and_no_grad_inputs():
    ends = [4, 9]
    t = make_inputs(ends, dtype=torch.float32)
    offs = torch.tensor(ends, dtype=torch.int32)
    with torch.inference_mode():
        out = expert_ffn_cpu_parallel(t["x"], t["w1"], t["w2"], offs)
    torch.testing.assert_close(out, reference(t["x"], t["w1"], t["w2"], ends).detach())


def test_bad_arguments_are_refused():
    t = make_inputs([2, 4], dtype=torch.float32)
    offs = torch.tensor([2, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="both adapter tensors"):
        expert_ffn_cpu_parallel(t["x"], t["w1"], t["w2"], offs, scale=t["scale"])
    meta = t["x"].detach().to("meta")
    with pytest.raises(ValueError, match="CPU tensors only"):
        expert_ffn_cpu_parallel(meta, t["w1"], t["w2"], offs)


def test_task_runner_runs_every_task_exactly_once(two_threads):
    """What the runner guarantees, whichever threads the OS lets run: each task once, grad off, ATen usable.
    (Where there is no OpenMP team the tasks run inline; the guarantee is the same.)"""
    runs, lock = Counter(), threading.Lock()

    def work(task):
        assert not torch.is_grad_enabled()
        torch.mm(torch.randn(64, 64), torch.randn(64, 64))  # ATen works inside the region
        with lock:
            runs[task] += 1

    run_on_openmp_team(list(range(40)), work)
    assert runs == Counter(range(40))
    run_on_openmp_team([], work)  # an empty task list is fine and runs nothing
    assert runs == Counter(range(40))


def test_task_runner_reraises_the_first_error(two_threads):
    def work(task):
        if task == 3:
            raise KeyError("task three failed")

    with pytest.raises(KeyError, match="task three failed"):
        run_on_openmp_team(list(range(8)), work)
    # the runner still works afterwards
    seen = []
    run_on_openmp_team([1, 2], seen.append)
    assert sorted(seen) == [1, 2]


def test_auto_picks_cpu_parallel_only_with_several_threads(make_bank):
    bank = make_bank(model_dim=16, ffn_hidden=32)
    x = torch.randn(1, 4, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert (
            choose_expert_impl(bank.config, x, bank.w1.dtype)[0] != "cpu_parallel"
        )  # one core: the per-group GEMMs measured faster
        torch.set_num_threads(2)
        want = "cpu_parallel" if openmp_team_available() else "grouped"
        assert choose_expert_impl(bank.config, x, bank.w1.dtype)[0] == want
    finally:
        torch.set_num_threads(before)
    explicit = make_bank(model_dim=16, ffn_hidden=32, expert_impl="cpu_parallel")
    assert choose_expert_impl(explicit.config, x, explicit.w1.dtype)[0] == "cpu_parallel"
