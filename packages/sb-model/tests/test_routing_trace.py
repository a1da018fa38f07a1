"""The routing trace records exactly the choices the bank acted on, in forward and in KV-cached decoding."""

from __future__ import annotations

import torch

from sb_model import GPT, GPTConfig, RoutingTrace


def _model(topk: int = 1) -> GPT:
    cfg = GPTConfig.tiny(bank={"topk": topk})
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_trace_matches_the_banks_routing_decisions():
    """The trace's per-expert counts are the served counts the bank's own metrics saw, layer by layer."""
    model = _model(topk=2)
    E, k = model.config.bank.num_experts, model.config.bank.topk
    tokens = torch.randint(1, model.config.vocab_size, (2, 40))
    model.bank.read_metrics(reset=True)
    trace = RoutingTrace()
    with torch.no_grad():
        out = model(tokens, routing_trace=trace)
    report = model.bank.read_metrics(reset=True)
    with torch.no_grad():
        plain = model(tokens)
    assert torch.equal(out.logits, plain.logits)  # recording changes nothing
    assert trace.layer_indices() == [b.layer_idx for b in model.blocks]
    ch = trace.layers[0]
    assert ch.experts.shape == (2, 40, k)
    assert ch.experts.dtype == torch.long and ch.served.dtype == torch.bool
    assert torch.all(ch.gates[ch.served] > 0) and torch.all(ch.gates[~ch.served] == 0)
    counts = trace.expert_counts(E).double() / (tokens.numel() * k)
    expected = torch.tensor(report.vectors["frac_srv"], dtype=torch.float64)
    torch.testing.assert_close(counts, expected, atol=1e-6, rtol=0)


def test_decode_trace_equals_full_forward_trace():
    model = _model()
    tokens = torch.randint(1, model.config.vocab_size, (1, 24))
    full = RoutingTrace()
    with torch.no_grad():
        model(tokens, routing_trace=full)
        state = model.new_decode_state(1, 32)
        stepwise = RoutingTrace()
        model.decode(tokens[:, :10], state, routing_trace=stepwise)
        for t in range(10, 24):
            model.decode(tokens[:, t : t + 1], state, routing_trace=stepwise)
    for layer in full.layer_indices():
        assert torch.equal(full.layers[layer].experts, stepwise.layers[layer].experts), layer
        torch.testing.assert_close(
            full.layers[layer].gates, stepwise.layers[layer].gates, atol=1e-4, rtol=1e-4
        )


def test_expert_counts_respects_mask():
    model = _model()
    tokens = torch.randint(1, model.config.vocab_size, (2, 16))
    trace = RoutingTrace()
    with torch.no_grad():
        model(tokens, routing_trace=trace)
    E = model.config.bank.num_experts
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0] = True
    first = trace.expert_counts(E, mask)
    second = trace.expert_counts(E, ~mask)
    assert torch.equal(first + second, trace.expert_counts(E))
    ch = trace.layers[trace.layer_indices()[0]]
    expected = torch.bincount(ch.experts[0][ch.served[0]], minlength=E)
    assert torch.equal(first[0], expected)


def test_trace_routing_equals_the_trace_of_a_full_forward():
    model = _model(topk=2)
    tokens = torch.randint(1, model.config.vocab_size, (2, 24))
    full = RoutingTrace()
    with torch.no_grad():
        model(tokens, routing_trace=full)
    blocks_only = model.trace_routing(tokens)
    assert blocks_only.layer_indices() == full.layer_indices()
    for layer in full.layer_indices():
        assert torch.equal(blocks_only.layers[layer].experts, full.layers[layer].experts)
        assert torch.equal(blocks_only.layers[layer].gates, full.layers[layer].gates)
        assert torch.equal(blocks_only.layers[layer].served, full.layers[layer].served)
