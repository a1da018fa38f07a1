"""Token routing: a text coloured by the expert each layer chose for each token (layers x tokens heatmap).

The routing comes from a running ``sb-train serve`` (``POST /v1/route``, the JSON of sb-train's README,
"Serving") or, without a server, from a checkpoint loaded through sb-train's own loader. Hover shows the
token, the experts and their gates."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from ..context import Context

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TEXT = "def main():\n    print('hello world')\n"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def route_from_server(url: str, text: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """``POST {url}/v1/route {"text": text}`` -> the routing JSON; errors carry the server's message."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/route", data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())["routing"]
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(err)
        raise RuntimeError(f"the server refused: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(f"no server answers at {url} ({getattr(err, 'reason', err)}); start one with "
                           "`sb-train serve RUN_OR_CHECKPOINT`, or use a checkpoint") from None


@st.cache_resource(max_entries=2, show_spinner="loading the checkpoint")
def _served_model(path: str):
    from sb_train.serve.served_model import load_served_model

    return load_served_model(path)


def route_from_checkpoint(path: str, text: str) -> dict[str, Any]:
    """The same JSON computed here: the checkpoint loaded through sb-train (weights_only, digest-checked)."""
    try:
        from sb_train.serve.routing_json import routing_json, trace_tokens
    except ImportError:
        raise RuntimeError("reading a checkpoint needs sb-train in this environment (uv sync in the "
                           "repository); or point the page at a running server") from None
    served = _served_model(path)
    ids = served.encode_prompt(text)
    if len(ids) > served.model.config.max_seq_len:
        raise RuntimeError(f"the text is {len(ids)} tokens; this model reads at most "
                           f"{served.model.config.max_seq_len}")
    return routing_json(trace_tokens(served.model, ids), ids, served.token_text, len(ids))


def token_routing_figure(routing: dict[str, Any]) -> go.Figure:
    """Heatmap layers x tokens; colour = the first choice's expert, hover = token, experts and gates."""
    layers, tokens = routing["layers"], routing["tokens"]
    num_experts = max(e for t in tokens for layer in t["experts"] for e in layer) + 1
    z = [[t["experts"][j][0] for t in tokens] for j in range(len(layers))]
    labels = [repr(t["token"])[1:-1] for t in tokens]
    hover = [[f"token {i}: {labels[i]}<br>experts {t['experts'][j]}<br>gates "
              f"{[round(g, 3) for g in t['gates'][j]]}" for i, t in enumerate(tokens)]
             for j in range(len(layers))]
    scale = []
    for e in range(num_experts):  # one flat colour band per expert
        colour = PALETTE[e % len(PALETTE)]
        scale += [[e / num_experts, colour], [(e + 1) / num_experts, colour]]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(tokens))), y=[f"layer {layer}" for layer in layers], text=hover,
        hoverinfo="text", colorscale=scale, zmin=-0.5, zmax=num_experts - 0.5,
        colorbar={"title": "expert", "tickvals": list(range(num_experts))}, xgap=1, ygap=1))
    fig.update_xaxes(tickvals=list(range(len(tokens))), ticktext=labels, tickangle=0)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Expert chosen by each layer for each token", height=160 + 40 * len(layers),
                      margin={"l": 70, "r": 20, "t": 50, "b": 40})
    return fig


def render(ctx: Context) -> None:
    st.title("Token routing")
    st.caption("Which expert each layer chooses for each token of a text, from a running `sb-train serve` "
               "or from a checkpoint.")
    source = st.radio("Source", ["server", "checkpoint"], horizontal=True, key="tokens_source")
    where = (st.text_input("Server URL", DEFAULT_URL, key="tokens_url") if source == "server"
             else st.text_input("Run or checkpoint folder", "", key="tokens_checkpoint"))
    text = st.text_area("Text", DEFAULT_TEXT, key="tokens_text")
    if not text or not where:
        st.info("Enter a text and a server URL or checkpoint folder.")
        return
    try:
        routing = route_from_server(where, text) if source == "server" else route_from_checkpoint(where, text)
    except Exception as err:  # one line for the reader: no server, a refused text, an unreadable checkpoint
        st.error(str(err))
        return
    st.plotly_chart(token_routing_figure(routing), width="stretch", key="tokens_heatmap")
    st.caption(f"{len(routing['tokens'])} tokens (the first is the document-start token), "
               f"{len(routing['layers'])} bank layers, top-{routing['k']} routing; colour = first choice")
