"""torch.compile(fullgraph=True) of the whole GPT on CPU: one graph, the eager result, and no recompilation
when schedule values (attention window, router temperature, cap, active experts) change."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from sb_model.gpt import GPT
from sb_model.gpt_config import GPTConfig


def _setup():
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(num_layers=3, skip_map=((2, 0),), skip_attn_layers=(1,)))
    tok = torch.randint(1, 97, (2, 33), generator=torch.Generator().manual_seed(1))
    tok[0, 12] = 0
    return model, tok[:, :-1], tok[:, 1:]


def test_full_model_compiles_fullgraph_without_recompiles():
    """Dynamo + AOTAutograd trace (backend aot_eager: no C++ build, so the default suite stays fast)."""
    torch._dynamo.reset()
    model, x, y = _setup()
    ref = model(x, y)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    out = compiled(x, y)
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert model.scalars.grad is not None and model.bank.router_w.grad is not None
    for window, temp, cap, active in ((1, 0.8, 3.0, 2), (3, 1.4, 0.0, 1), (2, 1.0, 13.7, 4)):
        model.set_window_blocks(window)
        model.routing_schedule.set_(temperature=temp, logit_cap=cap, active_experts=active, gumbel=active > 2)
        out = compiled(x, y)
        out.loss.backward()
        eager = model(x, y)
        if active <= 2:  # no Gumbel noise: compiled equals eager
            torch.testing.assert_close(out.loss, eager.loss)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    """The real CPU compiler (C++ codegen; minutes on a busy 2-core machine)."""
    torch._dynamo.reset()
    model, x, y = _setup()
    ref = model(x, y)
    out = torch.compile(model, fullgraph=True)(x, y)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    out.loss.backward()


@pytest.mark.slow
def test_inductor_flex_attention_inference_matches_sdpa():
    """CPU inference under torch.compile takes the FlexAttention path (attention='auto')."""
    torch._dynamo.reset()
    model, x, _ = _setup()
    model.eval()
    with torch.no_grad():
        ref = model(x, attention="sdpa").logits
        got = torch.compile(model, fullgraph=True)(x).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
