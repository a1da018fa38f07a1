"""The routing extension's JSON: per token, per bank layer, the chosen experts and their gates.

Shape (docs/design/serving.md, routing extension)::

    {"layers": [0, 1, ...],            # bank layers, in the order of the per-token lists
     "k": 1,                           # choices per token and layer
     "prompt_tokens": 12,              # the first tokens are the prompt (the document-start token first)
     "tokens": [{"id": 0, "token": "<|endoftext|>",
                 "experts": [[2], [0], ...],      # per layer: k expert indices
                 "gates": [[0.91], [0.77], ...]}  # per layer: k gates (0 when the choice was not served)
                ...]}

The decisions are the bank's own (:class:`sb_model.RoutingTrace` of a forward over the tokens, eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sb_model import GPT, RoutingTrace


@torch.no_grad()
def trace_tokens(model: GPT, ids: Sequence[int]) -> RoutingTrace:
    """The routing of one token sequence (SDPA masks, any length), every bank layer recorded."""
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=model.embed.weight.device)
    return model.trace_routing(tokens, attention="sdpa")


def routing_json(
    trace: RoutingTrace, ids: Sequence[int], token_text: Callable[[int], str], prompt_tokens: int
) -> dict[str, Any]:
    """The documented JSON of row 0 of ``trace`` for the tokens ``ids``."""
    layers = trace.layer_indices()
    experts = [trace.layers[i].experts[0].tolist() for i in layers]  # per layer: T lists of k
    gates = [trace.layers[i].gates[0].tolist() for i in layers]
    k = len(experts[0][0]) if layers and experts[0] else 0
    tokens = [
        {
            "id": int(tok),
            "token": token_text(int(tok)),
            "experts": [experts[j][t] for j in range(len(layers))],
            "gates": [gates[j][t] for j in range(len(layers))],
        }
        for t, tok in enumerate(ids)
    ]
    return {"layers": layers, "k": k, "prompt_tokens": prompt_tokens, "tokens": tokens}
