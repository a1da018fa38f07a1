"""The batching engine: choices of different prompt lengths decoded in one batch (joining it at different
steps) give exactly the tokens each gives alone, and a row's document must start on a block boundary for
that (docs/design/serving.md, batching)."""

from __future__ import annotations

import threading

import torch

from sb_model.generation import decode, new_decode_state
from sb_train.serve.engine import BatchEngine, Job
from sb_train.serve.schema import CompletionRequest

PROMPTS = ["def f(x):", "import os\nimport sys\n", "a", "class Foo:\n    def __init__(self):",
           "# a comment", "print('hello world')\n" * 3]


def _solo(served, prompt: str, max_tokens: int) -> str:
    ids = served.encode_prompt(prompt)
    out = served.model.generate(torch.tensor(ids), max_tokens, 0.0)[len(ids):].tolist()
    return served.decode(out[: out.index(served.eod)] if served.eod in out else out)


def test_mixed_length_batch_equals_each_prompt_alone(served):
    engine = BatchEngine(served.model, served.decode, served.token_text, max_batch=8, max_queue=16)
    texts = {i: "" for i in range(len(PROMPTS))}
    done = threading.Semaphore(0)

    def emitter(i: int):
        def emit(ev: tuple) -> None:
            if ev[0] == "delta":
                texts[i] += ev[2]
            else:
                assert ev[0] == "done", ev
                done.release()
        return emit

    max_tokens = 48
    for i, prompt in enumerate(PROMPTS):  # all queued before the worker starts: one batch, staggered joins
        req = CompletionRequest(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        engine.submit(Job(req, served.encode_prompt(prompt), emitter(i)))
    engine.start()
    try:
        for _ in PROMPTS:
            assert done.acquire(timeout=120)
    finally:
        engine.close()
    lengths = {len(served.encode_prompt(p)) % served.model.config.block_size for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every prompt has its own offset inside a block
    assert engine.peak_rows >= 4  # they really shared batches
    assert texts == {i: _solo(served, p, max_tokens) for i, p in enumerate(PROMPTS)}


def test_padding_by_whole_blocks_is_invisible_and_other_padding_is_not(served):
    """Why rows are padded by whole blocks: the router's block-position flags (and the block-wise windows)
    depend on the position inside a block. Padded by whole blocks, a prompt's flags are its flags alone and
    its logits equal up to float rounding; shifted by half a block, its flags change."""
    model, bs = served.model, served.model.config.block_size
    ids = served.encode_prompt("def main():\n    return 0\n")

    def last_logits(pad: int) -> torch.Tensor:
        state = new_decode_state(model, 1, pad + len(ids))
        return decode(model, torch.tensor([[served.eod] * pad + ids]), state)[0, -1]

    def flags(pad: int) -> torch.Tensor:
        return model.router_flags(torch.tensor([[served.eod] * pad + ids]))[0, pad:]

    torch.testing.assert_close(last_logits(2 * bs), last_logits(0), rtol=1e-4, atol=1e-4)
    assert torch.equal(flags(2 * bs), flags(0))
    assert not torch.equal(flags(bs // 2), flags(0))
