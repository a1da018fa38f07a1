"""The per-layer MoE baseline (ffn="layer_moe"): exact parameter matching under both rules, each layer routed
to its own experts only, forward/backward, compile, causality, decoding, routing trace, schedule mapping and
config errors (docs/design/model.md, per-layer MoE baseline)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from sb_model import GPT, GPTConfig, RoutingTrace
from sb_model.bank.config import BankConfig
from sb_model.bank.experts import grouped_mm_supported, probe_cpu_grouped_mm
from sb_model.schedule_tensors import RoutingSchedule


def _cfg(ffn="layer_moe", match="total", **kw) -> GPTConfig:
    bank = {"num_experts": 8, "ema_window_rev": 4, **kw.pop("bank", {})}
    return GPTConfig.tiny(ffn=ffn, layer_moe_match=match, bank=bank, **kw)


def _model(ffn="layer_moe", match="total", seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(_cfg(ffn, match, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # give the zero-initialised projections weight so every path matters
        for b in model.blocks:
            if b.attn is not None:
                b.attn.qkvo_w[3].copy_(torch.randn(b.attn.qkvo_w[3].shape, generator=g) * 0.3)
        if model.bank is not None:
            model.bank.w2.copy_(torch.randn(model.bank.w2.shape, generator=g) * 0.3)
    return model


def _tokens(B=2, T=48, seed=1):
    tok = torch.randint(1, 97, (B, T), generator=torch.Generator().manual_seed(seed))
    tok[0, 13] = 0
    tok[-1, 30] = 0
    return tok


# ------------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    "kw,groups",
    [
        (dict(), 4),  # 4 layers, one skips attention: it still owns experts
        (
            dict(
                num_layers=5,
                skip_attn_layers=(2,),
                layer_tie_groups=((0, 3), (1, 4)),
                bank={"num_experts": 6},
            ),
            3,
        ),
        (dict(bank={"num_experts": 8, "topk": 2}), 4),
    ],
)
def test_parameter_matching_is_exact_for_both_rules(kw, groups):
    counts, models = {}, {}
    for name, ffn, match in (
        ("bank", "bank", "active"),
        ("active", "layer_moe", "active"),
        ("total", "layer_moe", "total"),
        ("dense", "dense", "active"),
    ):
        models[name] = GPT(_cfg(ffn, match, **kw), device="meta")
        counts[name] = models[name].parameter_counts()
    cfg = models["bank"].config
    E, h, d, k, L = cfg.bank.num_experts, cfg.bank.ffn_hidden, cfg.model_dim, cfg.bank.topk, cfg.num_layers
    assert models["total"].config.expert_groups == models["active"].config.expert_groups == groups
    expert = 2 * h * d
    assert counts["bank"]["experts"] == E * expert
    assert counts["active"]["experts"] == groups * E * expert  # G x the bank's expert parameters
    assert counts["total"]["experts"] == counts["bank"]["experts"]  # exactly the bank's
    assert models["total"].config.experts_per_layer == E // groups
    # the same FFN weights per token in every variant: k experts of h (or a dense FFN of k*h) per layer
    active = {c["ffn_active_per_token"] for c in counts.values()}
    assert active == {L * k * expert}
    assert counts["dense"]["dense_ffn"] == L * k * expert
    assert counts["total"]["active_per_token"] - counts["total"]["total"] == (
        counts["bank"]["active_per_token"] - counts["bank"]["total"]
    )
    for part in ("attention", "embeddings", "lm_head", "scalars", "other"):  # only the FFN differs
        assert len({c[part] for c in counts.values()}) == 1, part
    in_dim = cfg.bank.router_in_dim
    for name in ("bank", "active", "total"):
        e_l = models[name].config.experts_per_layer
        assert counts[name]["routers"] == L * (e_l * in_dim + e_l)  # a router per layer over its experts
        assert counts[name]["total"] == sum(
            counts[name][p] for p in ("attention", "ffn_bank", "embeddings", "lm_head", "adapters", "scalars")
        )


def test_summary_states_what_was_matched():
    summary = GPT(_cfg(), device="meta").parameter_summary()
    assert summary["ffn"] == {
        "kind": "layer_moe",
        "match": "total",
        "expert_groups": 4,
        "experts_per_layer": 2,
        "ffn_hidden": 64,
        "topk": 1,
        "bank_num_experts": 8,
    }
    assert summary["parameter_counts"]["experts"] == 8 * 2 * 64 * 32
    assert GPT(_cfg("bank"), device="meta").parameter_summary()["ffn"]["match"] is None
    dense = GPT(_cfg("dense", bank={"topk": 2}), device="meta").parameter_summary()["ffn"]
    assert (dense["match"], dense["ffn_hidden"], dense["experts_per_layer"]) == ("active", 128, 0)
    text = GPT(_cfg(), device="meta").format_parameter_counts()
    assert "per-layer MoE total (4 groups × 2 experts, matched on total parameters)" in text
    assert "active per token:" in text


# ------------------------------------------------------------------------------------------ routing
def test_each_layer_routes_only_to_its_own_experts():
    """Only group 2's experts have output weights: the bank's output is non-zero at layer 2 alone."""
    model = _model()
    bank = model.bank
    E = model.config.experts_per_layer
    with torch.no_grad():
        keep = torch.zeros(bank.w2.shape[0], 1, 1)
        keep[2 * E : 3 * E] = 1
        bank.w2.mul_(keep)
    tok = _tokens()
    x = torch.nn.functional.rms_norm(torch.randn(*tok.shape, 32), (32,))
    ctx = bank.context(model.router_flags(tok), model.routing_schedule)
    outs = [bank(x, layer, ctx)[0].abs().sum().item() for layer in range(4)]
    assert outs[2] > 0 and outs[0] == outs[1] == outs[3] == 0


def test_forward_backward_reaches_every_expert_group():
    for match in ("active", "total"):
        model = _model(match=match).train()
        out = model(_tokens(), _tokens(seed=2))
        assert torch.isfinite(out.loss) and out.aux_loss > 0
        out.loss.backward()
        E = model.config.experts_per_layer
        per_expert = model.bank.w1.grad.abs().sum(dim=(1, 2)).view(4, E)
        assert torch.all(per_expert.sum(dim=1) > 0), match  # each layer's group learned from its tokens
        assert model.bank.router_w.grad.abs().sum() > 0


def test_every_expert_implementation_runs_the_group_slices_alike():
    """The CPU default (expert-parallel kernel or grouped_mm on a weight slice) equals the blocked bmm."""
    probe_cpu_grouped_mm()
    grouped = grouped_mm_supported(torch.device("cpu"), torch.float32, (32, 64))
    results = []
    for impl in ("auto", "blocked_bmm", *(["grouped_mm"] if grouped else [])):
        model = _model(match="active", bank={"expert_impl": impl}).train()
        torch.manual_seed(3)
        out = model(_tokens(), _tokens(seed=2))
        out.loss.backward()
        results.append((out.loss.detach(), model.bank.w1.grad.clone(), model.bank.w2.grad.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_routing_trace_names_model_layers_and_their_own_experts():
    model = _model(match="total").eval()
    E, tok = model.config.experts_per_layer, _tokens()
    model.bank.read_metrics(reset=True)
    trace = RoutingTrace()
    with torch.no_grad():
        model(tok, routing_trace=trace)
    report = model.bank.read_metrics(reset=True)
    assert trace.layer_indices() == [0, 1, 2, 3] and [int(r["layer"]) for r in report.per_layer] == [
        0,
        1,
        2,
        3,
    ]
    assert all(int(ch.experts.max()) < E for ch in trace.layers.values())
    counts = trace.expert_counts(E).double() / tok.numel()
    torch.testing.assert_close(counts, torch.tensor(report.vectors["frac_srv"], dtype=torch.float64))


def test_active_expert_counts_stay_in_the_banks_terms():
    """A schedule that turns on c of the bank's 8 experts turns on ceil(c * 2 / 8) of each layer's 2."""
    model = _model(match="total")
    sched = model.routing_schedule
    got = [int(sched.set_(active_experts=c).active_mask.sum()) for c in range(1, 9)]
    assert got == [1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match=r"active_experts must be in \[1, 8\]"):
        sched.set_(active_experts=9)
    bank = _model("bank").routing_schedule
    assert [int(bank.set_(active_experts=c).active_mask.sum()) for c in (1, 5, 8)] == [1, 5, 8]
    assert int(RoutingSchedule.create(4, 3, active_experts=4, counts_out_of=12).active_mask.sum()) == 1


# ------------------------------------------------------------------------------------------ model properties
def test_layer_moe_is_causal():
    model = _model().eval()
    model.set_window_blocks(2)
    tok = _tokens(B=1, T=64)
    ref = model(tok).logits
    for t in (10, 40):
        alt = tok.clone()
        alt[0, t + 1 :] = torch.randint(1, 97, (63 - t,), generator=torch.Generator().manual_seed(t))
        alt[0, t + 2 :: 7] = 0
        got = model(alt).logits
        assert not torch.allclose(got, ref)
        torch.testing.assert_close(got[:, : t + 1], ref[:, : t + 1], atol=1e-5, rtol=1e-5)


def test_decode_equals_full_forward_with_trace():
    model = _model(match="active").eval()
    model.set_window_blocks(2)
    tok = _tokens(B=2, T=40)
    full_trace, step_trace = RoutingTrace(), RoutingTrace()
    with torch.no_grad():
        full = model(tok, routing_trace=full_trace).logits
        state = model.new_decode_state(2, 40)
        pieces = [model.decode(tok[:, :12], state, routing_trace=step_trace)]
        for t in range(12, 40):
            pieces.append(model.decode(tok[:, t : t + 1], state, routing_trace=step_trace))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    for layer in full_trace.layer_indices():
        assert torch.equal(full_trace.layers[layer].experts, step_trace.layers[layer].experts), layer


def test_state_dict_round_trip_keeps_the_bank_names():
    model = _model()
    names = {n for n, _ in model.named_parameters()}
    assert {"bank.w1", "bank.w2", "bank.router_w", "bank.router_b"} <= names
    assert model.bank.w1.shape == (8, 64, 32)  # 4 groups x 2 experts, stacked
    twin = GPT(model.config)
    twin.load_state_dict(model.state_dict())
    tok = _tokens()
    torch.testing.assert_close(twin.eval()(tok).logits, model.eval()(tok).logits)
    with pytest.raises(RuntimeError, match=r"bank\.w1"):  # a shared bank's checkpoint does not fit
        GPT(_cfg(match="active")).load_state_dict(model.state_dict())


def test_compiles_fullgraph_without_recompiles():
    torch._dynamo.reset()
    model = _model(num_layers=3, skip_map=((2, 0),), skip_attn_layers=(1,), bank={"num_experts": 6})
    x, y = _tokens(T=32), _tokens(T=32, seed=4)
    ref = model(x, y)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    out = compiled(x, y)
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    for temp, active in ((0.8, 1), (1.3, 6)):
        model.routing_schedule.set_(temperature=temp, active_experts=active)
        torch.testing.assert_close(compiled(x, y).loss, model(x, y).loss)
    assert counter.frame_count == 1


# ------------------------------------------------------------------------------------------ config errors
def test_config_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"ffn must be one of 'bank', 'layer_moe', 'dense' \(got 'moe'\)"):
        GPTConfig.tiny(ffn="moe")
    with pytest.raises(ValueError, match=r"layer_moe_match must be one of 'active', 'total' \(got 'all'\)"):
        GPTConfig.tiny(ffn="layer_moe", layer_moe_match="all")
    with pytest.raises(
        ValueError, match=r"over the 4 expert groups.*num_experts = 4, 8, 12.*num_layers = 1, 2, 3 or 6"
    ):
        GPTConfig.tiny(ffn="layer_moe", layer_moe_match="total", bank={"num_experts": 6})
    with pytest.raises(ValueError, match=r"at least topk=2.*num_experts = 8, 12, 16"):
        GPTConfig.tiny(ffn="layer_moe", layer_moe_match="total", bank={"num_experts": 4, "topk": 2})
    with pytest.raises(ValueError, match="expert_layer_map is set from ffn='layer_moe'"):
        GPTConfig.tiny(bank={"expert_layer_map": (0, 1, 2, 3)})
    with pytest.raises(ValueError, match="expert_layer_map must give each"):
        BankConfig(num_layers=3, expert_layer_map=(0, 2, 2))
    # the match rule is read only for layer_moe: the bank and dense models ignore it
    assert GPTConfig.tiny(layer_moe_match="total").ffn_bank == GPTConfig.tiny().ffn_bank
    cfg = _cfg()
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["bank"]["num_experts"] == 8
