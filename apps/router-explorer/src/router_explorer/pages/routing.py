"""Per-layer routing of one run: layer x expert heatmap at a step, per-layer metric lines over steps,
served vs demanded per expert, and the activation schedule / temperature / logit cap under them."""

from __future__ import annotations

import bisect

import numpy as np
import streamlit as st

from .. import data, figures
from ..context import FOCUS_KEY, Context, Focus

FAMILIES = {"load": "served load", "demand": "demanded", "importance": "importance"}
ALL_LAYERS = -1
STEP_KEY, LAYER_KEY = "routing_step", "routing_layer"
FAMILY_KEY, RANGE_KEY = "routing_family", "routing_range"


def nearest_step(steps: list[int], step: int) -> int:
    """The logged step closest to `step` (steps sorted)."""
    i = bisect.bisect_left(steps, step)
    candidates = steps[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda s: (abs(s - step), s))


def _apply_focus(steps: list[int], n_layers: int) -> None:
    """Move the widgets to a pending focus (from a health finding or a link), once."""
    focus: Focus | None = st.session_state.pop(FOCUS_KEY, None)
    if focus is None:
        return
    if focus.layer is not None and 0 <= focus.layer < n_layers:
        st.session_state[LAYER_KEY] = focus.layer
    if focus.step_from is not None:
        st.session_state[STEP_KEY] = nearest_step(steps, focus.step_from)
        st.session_state[RANGE_KEY] = (focus.step_from, focus.step_to if focus.step_to is not None
                                       else focus.step_from)


def render(ctx: Context) -> None:
    st.title("Routing")
    if ctx.run_id is None:
        st.info("Pick a run in the sidebar.")
        return
    steps = data.router_steps(ctx.version, ctx.run_id)
    if not steps:
        st.info(f"Run {ctx.run_id} logged no router metrics (router.csv missing or empty).")
        return
    info = data.run_info(ctx.version, ctx.run_id)
    lines = data.router_lines(ctx.version, ctx.run_id)
    n_layers = int(lines["layer"].max()) + 1 if not lines.is_empty() else int(info["num_layers"] or 0)
    _apply_focus(steps, n_layers)
    if st.session_state.get(STEP_KEY) not in steps:
        st.session_state[STEP_KEY] = steps[-1]
    if st.session_state.get(LAYER_KEY) not in [ALL_LAYERS, *range(n_layers)]:
        st.session_state[LAYER_KEY] = ALL_LAYERS

    top_k = f", top-{info['top_k']}" if info["top_k"] else ""
    st.caption(f"{ctx.run_id}: {n_layers} layers × {info['num_experts'] or '?'} experts{top_k}, "
               f"{len(steps):,} logged router steps")
    controls = st.columns([5, 2, 3])
    step = int(controls[0].select_slider("Step", options=steps, key=STEP_KEY))
    layer_choice = controls[1].selectbox(
        "Layer", [ALL_LAYERS, *range(n_layers)], key=LAYER_KEY,
        format_func=lambda v: "all layers" if v == ALL_LAYERS else f"layer {v}",
    )
    family = controls[2].radio("Heatmap of", list(FAMILIES), format_func=FAMILIES.get, horizontal=True,
                               key=FAMILY_KEY)
    layer = None if layer_choice == ALL_LAYERS else int(layer_choice)
    focus_range = st.session_state.get(RANGE_KEY)
    if focus_range is not None:
        left, right = st.columns([6, 1])
        left.caption(f"Highlighted: steps {focus_range[0]:,}–{focus_range[1]:,} (from a health finding)")
        if right.button("clear highlight", key="routing_clear"):
            st.session_state.pop(RANGE_KEY, None)
            st.rerun()

    top = st.columns([3, 2])
    matrix = data.expert_matrix(ctx.version, ctx.run_id, step, str(family))
    top[0].plotly_chart(figures.expert_heatmap(matrix, str(family), step, layer), width="stretch",
                        key="routing_heatmap")
    load = matrix if family == "load" else data.expert_matrix(ctx.version, ctx.run_id, step, "load")
    demand = data.expert_matrix(ctx.version, ctx.run_id, step, "demand")
    if load.size and demand.size and np.isfinite(demand).any():
        top[1].plotly_chart(figures.served_vs_demanded(load, demand, layer, step), width="stretch",
                            key="routing_served")
    else:
        top[1].info("No per-expert served/demanded vectors at this step.")

    st.subheader("Per-layer router metrics")
    cv2 = st.radio("CV² of", ["load_cv2", "imp_cv2"], horizontal=True, key="routing_cv2",
                   format_func=lambda m: "load" if m == "load_cv2" else "importance")
    grid = st.columns(2)
    for i, metric in enumerate(("entropy_mean", str(cv2), "topk_prob_mean", "max_logit")):
        if lines.is_empty() or lines[metric].is_null().all():
            grid[i % 2].info(f"{figures.METRIC_TITLES[metric]}: not logged")
            continue
        grid[i % 2].plotly_chart(
            figures.layer_lines(lines, metric, step, layer, focus_range), width="stretch",
            key=f"routing_line_{metric}",
        )
    st.caption(f"Bucket means over at most {data.MAX_POINTS} points per layer; dashed line: the chosen "
               "step. Hover a line for its layer.")
    st.subheader("Expert activation schedule, router temperature and logit cap")
    st.plotly_chart(figures.schedule_figure(data.schedule(ctx.version, ctx.run_id), step), width="stretch",
                    key="routing_schedule")
