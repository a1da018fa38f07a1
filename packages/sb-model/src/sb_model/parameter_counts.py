"""Parameter accounting of a GPT: unique parameters by category, and the reference's printed block."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sb_model.gpt import GPT


def parameter_counts(model: GPT) -> dict[str, int]:
    """Unique parameters of a :class:`~sb_model.gpt.GPT` by category: attention, experts, routers, ffn_bank
    (= experts + routers), dense_ffn, token_embed, value_embeds, embeddings, lm_head, adapters, scalars,
    other, total (docs/design/presets.md, parameter counts)."""
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
    return out


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
    if model.bank is not None:
        lines += [
            f"FFN bank total: {f(c['ffn_bank'])}",
            f"  ├─ experts W1/W2: {f(c['experts'])}",
            f"  └─ routers: {f(c['routers'])}",
        ]
    else:
        lines.append(f"dense FFNs: {f(c['dense_ffn'])}")
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
    return "\n".join(lines)
