"""Parameter accounting of a GPT: unique parameters by category, the FFN variant's match, the printed block.

Total, expert and active-per-token counts are what a comparison of FFN variants (shared bank, per-layer MoE,
dense) states it matched (docs/design/model.md, per-layer MoE baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sb_model.gpt import GPT


def parameter_counts(model: GPT) -> dict[str, int]:
    """Unique parameters of a :class:`~sb_model.gpt.GPT` by category: attention, experts, routers, ffn_bank
    (= experts + routers), dense_ffn, token_embed, value_embeds, embeddings, lm_head, adapters, scalars,
    other, total (docs/design/presets.md, parameter counts); and the per-token compute measures
    ffn_active_per_token (the FFN weights one token is multiplied by, summed over layers: a bank expert used
    by several layers counts once per layer) and active_per_token (= total - experts - dense_ffn +
    ffn_active_per_token), which can exceed total for the shared bank (docs/design/model.md, per-layer MoE
    baseline)."""
    seen: set[int] = set()

    def count(params) -> int:
        n = 0
        for p in params:
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    out: dict[str, int] = {}
    out["attention"] = count(b.attn.qkvo_w for b in model.blocks if b.attn is not None)
    bank = model.bank
    out["experts"] = count([bank.w1, bank.w2]) if bank is not None else 0
    out["routers"] = count([bank.router_w, bank.router_b]) if bank is not None else 0
    out["ffn_bank"] = out["experts"] + out["routers"]
    out["dense_ffn"] = count(
        p for b in model.blocks if b.dense_ffn is not None for p in b.dense_ffn.parameters()
    )
    out["token_embed"] = count([model.embed.weight])
    out["value_embeds"] = count(ve.weight for ve in model.value_embeds)
    out["embeddings"] = out["token_embed"] + out["value_embeds"]
    out["lm_head"] = count([model.lm_head])
    out["adapters"] = count([bank.adapter_scale, bank.adapter_bias]) if bank is not None else 0
    out["scalars"] = count([model.scalars])
    out["other"] = count(model.parameters())
    out["total"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    cfg = model.config
    per_layer = 2 * cfg.bank.topk * cfg.bank.ffn_hidden * cfg.model_dim  # W1 and W2 of k experts, or dense
    out["ffn_active_per_token"] = cfg.num_layers * per_layer
    out["active_per_token"] = out["total"] - out["experts"] - out["dense_ffn"] + out["ffn_active_per_token"]
    return out


def ffn_summary(model: GPT) -> dict[str, Any]:
    """What the FFN is and what it was matched on (run.json ``ffn``, docs/log-format.md §2): kind, match
    (layer_moe's rule; "active" for dense, which has the bank's active size; None for the bank, the
    reference), expert_groups, experts_per_layer, ffn_hidden, topk, and the reference bank's num_experts."""
    cfg = model.config
    match = {"bank": None, "dense": "active", "layer_moe": cfg.layer_moe_match}[cfg.ffn]
    return {
        "kind": cfg.ffn,
        "match": match,
        "expert_groups": cfg.expert_groups,
        "experts_per_layer": cfg.experts_per_layer,
        "ffn_hidden": cfg.bank.ffn_hidden if cfg.ffn != "dense" else cfg.bank.topk * cfg.bank.ffn_hidden,
        "topk": cfg.bank.topk if cfg.ffn != "dense" else 1,
        "bank_num_experts": cfg.bank.num_experts,
    }


def run_header_counts(model: GPT) -> dict[str, Any]:
    """The run.json keys of the accounting: ``ffn`` (:func:`ffn_summary`) and ``parameter_counts``."""
    return {"ffn": ffn_summary(model), "parameter_counts": parameter_counts(model)}


def format_parameter_counts(model: GPT) -> str:
    """The reference's printed block (docs/design/presets.md), values as ``n:, (n/1e6:.3f M)``."""
    c = parameter_counts(model)
    cfg = model.config
    f = lambda n: f"{n:,} ({n / 1e6:.3f}M)"  # noqa: E731
    n_attn = sum(b.attn is not None for b in model.blocks)
    lines = [
        "=== Parameter counts ===",
        f"model total: {f(c['total'])}",
        f"attention stack ({n_attn} of {cfg.num_layers} layers run attention): {f(c['attention'])}",
    ]
    if cfg.ffn == "bank":
        lines += [
            f"FFN bank total: {f(c['ffn_bank'])}",
            f"  ├─ experts W1/W2: {f(c['experts'])}",
            f"  └─ routers: {f(c['routers'])}",
        ]
    elif cfg.ffn == "layer_moe":
        lines += [
            f"per-layer MoE total ({cfg.expert_groups} groups × {cfg.experts_per_layer} experts, matched on "
            f"{cfg.layer_moe_match} parameters): {f(c['ffn_bank'])}",
            f"  ├─ experts W1/W2: {f(c['experts'])}",
            f"  └─ routers: {f(c['routers'])}",
        ]
    else:
        lines.append(f"dense FFNs (hidden {cfg.bank.topk * cfg.bank.ffn_hidden}): {f(c['dense_ffn'])}")
    lines += [
        f"embeddings (tok + {cfg.num_value_embeds}× value): {f(c['embeddings'])}",
        f"  └─ token embed: {f(c['token_embed'])}",
        f"  └─ value embeds: {f(c['value_embeds'])}",
        f"lm head ({'untied' if model.lm_head is not None else 'tied'}): {f(c['lm_head'])}",
        f"adapters: {f(c['adapters'])}",
        f"scalars: {f(c['scalars'])}",
    ]
    if c["other"]:
        lines.append(f"other (unclassified): {f(c['other'])}")
    lines.append(
        f"active per token: {f(c['active_per_token'])} (FFN weights applied per token over "
        f"{cfg.num_layers} layers: {f(c['ffn_active_per_token'])})"
    )
    return "\n".join(lines)
