"""Domain specialisation: expert load per data domain per layer, when the run logged domains.csv."""

from __future__ import annotations

import polars as pl
import streamlit as st

from .. import data, figures
from ..context import Context

VALUES = {
    "frac_of_domain": "expert's share of the domain's tokens",
    "frac_of_expert": "domain's share of the expert's tokens",
}


def render(ctx: Context) -> None:
    st.title("Domain specialisation")
    if ctx.run_id is None:
        st.info("Pick a run in the sidebar.")
        return
    steps = data.domain_steps(ctx.version, ctx.run_id)
    if not steps:
        st.info(
            f"Run {ctx.run_id} has no domain labels: it logged no domains.csv (docs/log-format.md §5; "
            "written when the evaluation data carries a domain per document)."
        )
        return
    if st.session_state.get("domains_step") not in steps:
        st.session_state["domains_step"] = steps[-1]
    cols = st.columns([3, 2])
    step = int(cols[0].select_slider("Step", options=steps, key="domains_step"))
    value = str(cols[1].radio("Colour", list(VALUES), format_func=VALUES.get, key="domains_value"))
    frame = data.domain_load(ctx.version, ctx.run_id, step)
    domains = sorted(frame["domain"].unique().to_list())
    st.plotly_chart(figures.domain_heatmaps(frame, value, domains), width="stretch", key="domains_maps")
    spec = data.domain_specialization(ctx.version, ctx.run_id)
    if not spec.is_empty():
        st.plotly_chart(figures.specialization_lines(spec), width="stretch", key="domains_spec")
        at_step = spec.filter((pl.col("step") == step) & pl.col("specialization").is_not_null()).sort("layer")
        if not at_step.is_empty():
            pairs = at_step.select("layer", "specialization").rows()
            scores = ", ".join(f"layer {layer}: {v:.3f}" for layer, v in pairs)
            st.caption(f"NMI at step {step:,}: {scores} (0 = every expert serves the domains alike, 1 = each "
                       "expert serves one domain; docs/log-format.md §5)")
    top = (
        frame.sort("frac_of_expert", descending=True)
        .group_by(["layer", "expert"], maintain_order=True)
        .first()
        .sort(["layer", "expert"])
        .select("layer", "expert", "domain", "frac_of_expert", "tokens")
    )
    with st.expander("Each expert's main domain at this step"):
        st.dataframe(top, hide_index=True, width="stretch")
