"""Run picker: filter runs by preset, state, date and final loss; key figures; pick runs to compare."""

from __future__ import annotations

import datetime as dt

import polars as pl
import streamlit as st

from ..context import COMPARE_KEY, Context

TABLE_COLUMNS = {
    "run_id": st.column_config.TextColumn("run"),
    "preset": st.column_config.TextColumn("preset"),
    "state": st.column_config.TextColumn("state"),
    "created_at": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm"),
    "last_step": st.column_config.NumberColumn("steps", format="%d"),
    "num_layers": st.column_config.NumberColumn("layers", format="%d"),
    "num_experts": st.column_config.NumberColumn("experts", format="%d"),
    "final_loss": st.column_config.NumberColumn("final loss", format="%.4f",
                                                help="final val loss, else final train loss"),
    "best_val_loss": st.column_config.NumberColumn("best val", format="%.4f"),
    "best_val_step": st.column_config.NumberColumn("best at", format="%d"),
    "minutes": st.column_config.NumberColumn("train min", format="%.2f"),
    "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.0f"),
    "health_score_final": st.column_config.ProgressColumn("health", min_value=0.0, max_value=1.0,
                                                          format="%.2f"),
    "collapsed_layers_final": st.column_config.NumberColumn("collapsed layers", format="%d"),
}


def key_figures(runs: pl.DataFrame) -> pl.DataFrame:
    """The run_summary columns the picker shows, with a final loss (val, else train) and minutes."""
    return runs.with_columns(
        pl.coalesce("final_val_loss", "final_train_loss").alias("final_loss"),
        (pl.col("time_ms") / 60_000).alias("minutes"),
    ).select([c for c in TABLE_COLUMNS if c in runs.columns or c in ("final_loss", "minutes")])


def filter_runs(
    table: pl.DataFrame,
    presets: list[str],
    states: list[str],
    dates: tuple[dt.date, dt.date] | None,
    loss_range: tuple[float, float] | None,
) -> pl.DataFrame:
    """Rows matching every filter (an empty preset/state list means all)."""
    out = table
    if presets:
        out = out.filter(pl.col("preset").is_in(presets))
    if states:
        out = out.filter(pl.col("state").is_in(states))
    if dates is not None:
        out = out.filter(pl.col("created_at").dt.date().is_between(dates[0], dates[1]))
    if loss_range is not None:
        out = out.filter(pl.col("final_loss").is_between(loss_range[0], loss_range[1]))
    return out


def _store_compare() -> None:
    st.session_state[COMPARE_KEY] = list(st.session_state["runs_compare"])


def render(ctx: Context) -> None:
    st.title("Runs")
    table = key_figures(ctx.runs)
    cols = st.columns(4)
    presets = sorted(p for p in table["preset"].unique().to_list() if p is not None)
    states = sorted(s for s in table["state"].unique().to_list() if s is not None)
    chosen_presets = cols[0].multiselect("Preset", presets, placeholder="all presets", key="runs_presets")
    chosen_states = cols[1].multiselect("State", states, placeholder="all states", key="runs_states")
    dates = None
    created = table["created_at"].drop_nulls()
    if not created.is_empty():
        first, last = created.min().date(), created.max().date()  # type: ignore[union-attr]
        picked = cols[2].date_input("Started between", (first, last), key="runs_dates")
        if isinstance(picked, tuple) and len(picked) == 2 and (picked[0], picked[1]) != (first, last):
            dates = (picked[0], picked[1])
    loss_range = None
    losses = table["final_loss"].drop_nulls().drop_nans()
    if losses.len() >= 2 and losses.min() < losses.max():  # type: ignore[operator]
        lo, hi = float(losses.min()), float(losses.max())  # type: ignore[arg-type]
        picked_loss = cols[3].slider("Final loss", lo, hi, (lo, hi), format="%.3f", key="runs_loss")
        if picked_loss != (lo, hi):
            loss_range = (float(picked_loss[0]), float(picked_loss[1]))
    shown = filter_runs(table, chosen_presets, chosen_states, dates, loss_range)
    st.caption(f"{shown.height} of {table.height} run(s)")
    st.dataframe(shown, column_config=TABLE_COLUMNS, hide_index=True, width="stretch")

    if ctx.run_id is not None:
        _run_card(ctx, table.filter(pl.col("run_id") == ctx.run_id))

    options = shown["run_id"].to_list()
    default = [r for r in st.session_state.get(COMPARE_KEY, []) if r in options] or options[:4]
    st.multiselect("Runs to compare on the Losses page", options, default=default, key="runs_compare",
                   on_change=_store_compare)
    st.session_state.setdefault(COMPARE_KEY, default)


def _run_card(ctx: Context, row: pl.DataFrame) -> None:
    if row.is_empty():
        return
    r = row.row(0, named=True)
    st.subheader(f"{r['run_id']} · {r.get('preset') or '?'} · {r.get('state') or '?'}")
    cols = st.columns(6)
    cols[0].metric("final loss", _fmt(r.get("final_loss"), "{:.4f}"))
    cols[1].metric("best val", _fmt(r.get("best_val_loss"), "{:.4f}"),
                   help=f"at step {r.get('best_val_step')}")
    cols[2].metric("steps", _fmt(r.get("last_step"), "{:,}"))
    cols[3].metric("training time", _fmt(r.get("minutes"), "{:.1f} min"))
    cols[4].metric("tokens/s", _fmt(r.get("tokens_per_s"), "{:,.0f}"))
    cols[5].metric("router health", _fmt(r.get("health_score_final"), "{:.2f}"),
                   help=f"collapsed layers at the end: {r.get('collapsed_layers_final')}")


def _fmt(value: object, pattern: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return pattern.format(value)
