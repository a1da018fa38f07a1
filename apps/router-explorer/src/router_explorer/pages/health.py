"""Router-health findings of one run (sb-analysis rules), each linking to its layer and steps."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from .. import data, figures
from ..context import FOCUS_KEY, Context, Focus

BADGES = {"bad": ":red-background[bad]", "warn": ":orange-background[warn]",
          "info": ":blue-background[info]", "ok": ":green-background[ok]"}
MAX_LISTED = 200


def finding_link(run_id: str, layer: int | None, step_from: int | None, step_to: int | None) -> str:
    """A query string that opens the routing page on the finding's layer and steps."""
    params: dict[str, object] = {"page": "routing", "run": run_id}
    if layer is not None:
        params["layer"] = layer
    if step_from is not None:
        params["step"] = step_from
        params["step_to"] = step_to if step_to is not None else step_from
    return "?" + urlencode(params)


def _open(layer: int | None, step_from: int | None, step_to: int | None) -> None:
    st.session_state[FOCUS_KEY] = Focus(layer, step_from, step_to)
    st.session_state["page"] = "Routing"


def render(ctx: Context) -> None:
    st.title("Router health")
    if ctx.run_id is None:
        st.info("Pick a run in the sidebar.")
        return
    found = data.health(ctx.version, ctx.run_id)
    counts = dict(found.group_by("severity").len().iter_rows())
    cols = st.columns(4)
    for col, severity in zip(cols, ("bad", "warn", "info", "ok"), strict=True):
        col.metric(severity, counts.get(severity, 0))
    st.caption("Rules of the router-metrics guide, evaluated by sb-analysis (docs/log-format.md §7). "
               "Open a finding to see its layer and steps on the Routing page.")
    for i, row in enumerate(found.head(MAX_LISTED).iter_rows(named=True)):
        where = _where(row)
        text, button = st.columns([8, 2])
        link = finding_link(ctx.run_id, row["layer"], row["step_from"], row["step_to"])
        text.markdown(f"{BADGES.get(row['severity'], row['severity'])} **{row['rule']}** — {row['message']}"
                      f"  \n{where} · [link]({link})")
        if row["step_from"] is not None or row["layer"] is not None:
            button.button("Show in Routing", key=f"health_open_{i}", on_click=_open,
                          args=(row["layer"], row["step_from"], row["step_to"]))
    if found.height > MAX_LISTED:
        st.caption(f"{found.height - MAX_LISTED} more finding(s) in the table below.")
    with st.expander("Findings table"):
        st.dataframe(found, hide_index=True, width="stretch")

    lines = data.router_lines(ctx.version, ctx.run_id)
    if not lines.is_empty():
        st.plotly_chart(figures.layer_step_heatmap(lines, "health_score", 0.0, 1.0), width="stretch",
                        key="health_score_map")
        st.plotly_chart(figures.layer_step_heatmap(lines, "max_frac", 0.0, 1.0, colorscale="Reds"),
                        width="stretch", key="health_maxfrac_map")
    windows = data.run_health_windows(ctx.version, ctx.run_id)
    if not windows.is_empty():
        with st.expander("Window aggregates behind the run-level rules"):
            st.dataframe(windows.drop("run_id"), hide_index=True, width="stretch")


def _where(row: dict) -> str:
    parts = []
    if row["layer"] is not None:
        parts.append(f"layer {row['layer']}")
    if row["step_from"] is not None:
        parts.append(f"steps {row['step_from']:,}–{row['step_to']:,}")
    return ", ".join(parts) or "whole run"


