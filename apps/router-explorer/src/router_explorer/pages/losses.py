"""Loss curves of several runs overlaid: train (smoothed) and val, on a step, time or token axis."""

from __future__ import annotations

import streamlit as st

from .. import data, figures
from ..context import COMPARE_KEY, Context

X_LABELS = {"step": "step", "time": "training time", "tokens": "tokens"}


def _store_compare() -> None:
    st.session_state[COMPARE_KEY] = list(st.session_state["losses_runs"])


def render(ctx: Context) -> None:
    st.title("Loss curves")
    all_ids = ctx.runs["run_id"].to_list()
    default = [r for r in st.session_state.get(COMPARE_KEY, []) if r in all_ids]
    if not default:
        default = [ctx.run_id] if ctx.run_id else all_ids[:1]
    picked = st.multiselect("Runs", all_ids, default=default, key="losses_runs", on_change=_store_compare)
    cols = st.columns([2, 3, 1, 1, 1])
    x = cols[0].radio("x axis", list(X_LABELS), format_func=X_LABELS.get, horizontal=True, key="losses_x")
    smoothing = cols[1].slider("Smoothing (EMA weight of the past)", 0.0, 0.99, 0.6, 0.01,
                               key="losses_smooth")
    show_train = cols[2].checkbox("train", True, key="losses_train")
    show_val = cols[3].checkbox("val", True, key="losses_val")
    log_y = cols[4].checkbox("log y", False, key="losses_logy")
    if not picked:
        st.info("Pick one or more runs.")
        return
    alpha = None if smoothing <= 0 else round(1.0 - smoothing, 4)
    train = data.train_curves(ctx.version, tuple(picked), alpha)
    val = data.val_curves(ctx.version, tuple(picked))
    if train.is_empty() and val.is_empty():
        st.info("These runs logged no loss yet.")
        return
    fig = figures.loss_figure(train, val, x=str(x), show_train=show_train, show_val=show_val,
                              smoothed=alpha is not None, log_y=log_y)
    st.plotly_chart(fig, width="stretch", key="losses_chart")
    st.caption(
        f"Train curves: EMA smoothing then at most {data.MAX_POINTS} points per run (each bucket's last "
        "point). Val points are not downsampled."
    )
