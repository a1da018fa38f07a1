"""Generation: KV-cached decoding gives the same logits and the same tokens as rerunning the whole
sequence."""

import pytest
import torch

from sb_model.generation import generate, sample_next
from sb_model.gpt import GPT
from sb_model.gpt_config import GPTConfig


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.tiny(bank={"ema_window_rev": 4}, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            if b.attn is not None:
                b.attn.qkvo_w[3].copy_(torch.randn(b.attn.qkvo_w[3].shape, generator=g) * 0.3)
        model.bank.w2.copy_(torch.randn(model.bank.w2.shape, generator=g) * 0.3)
    model.set_window_blocks(2)  # windows of 32 / 16 tokens: decoding crosses several blocks
    return model.eval()


def _prompt(B=2, T=11):
    tok = torch.randint(1, 97, (B, T), generator=torch.Generator().manual_seed(3))
    tok[0, 4] = 0  # a document boundary inside the prompt
    return tok


def test_decode_logits_equal_full_forward():
    model = _model()
    tok = torch.randint(1, 97, (2, 60), generator=torch.Generator().manual_seed(5))
    tok[0, 9] = 0
    tok[1, 30] = 0
    full = model(tok).logits
    state = model.new_decode_state(2, 60)
    pieces = [model.decode(tok[:, :20], state)]
    for t in range(20, 60):
        pieces.append(model.decode(tok[:, t : t + 1], state))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (0.8, 5)])
def test_cached_and_uncached_generation_give_identical_tokens(temperature, top_k):
    model = _model()
    prompt = _prompt()
    runs = [
        generate(
            model, prompt, 14, temperature, top_k, use_cache=c, generator=torch.Generator().manual_seed(7)
        )
        for c in (True, False)
    ]
    assert runs[0].shape == (2, 25)  # crosses a 16-token block boundary
    assert torch.equal(runs[0][:, :11], prompt)
    assert torch.equal(runs[0], runs[1])


def test_generate_method_and_1d_prompt_and_mode_restored():
    model = _model().train()
    out = model.generate(_prompt()[0], 5, temperature=0.0)
    assert out.shape == (16,) and model.training


def test_dense_variant_generates():
    model = GPT(GPTConfig.tiny(ffn="dense")).eval()
    a = generate(model, _prompt(), 6, 0.0, use_cache=True)
    b = generate(model, _prompt(), 6, 0.0, use_cache=False)
    assert torch.equal(a, b)


def test_sampling_rules_and_errors():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample_next(logits, 0.0).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(50)}
    assert picks <= {1, 3}
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, -1.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(_model(), _prompt(), 300)
