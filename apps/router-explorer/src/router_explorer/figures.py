"""Plotly figures of the app, built from the data module's frames (pure functions, no Streamlit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

X_AXES = {"step": ("step", "step"), "time": ("time_min", "training time (min)"),
          "tokens": ("tokens", "tokens")}
FAMILY_TITLES = {
    "load": "served load (share of assignments)",
    "demand": "demanded load (router choice before capacity/mask)",
    "importance": "importance (mean router probability)",
}
METRIC_TITLES = {
    "entropy_mean": "router entropy (nats)",
    "load_cv2": "load CV²",
    "imp_cv2": "importance CV²",
    "topk_prob_mean": "top-k probability",
    "max_logit": "max logit",
    "max_frac": "busiest expert's share",
    "health_score": "health score",
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
LEGEND_MAX_LAYERS = 8  # per-layer charts name their lines in a legend up to this many layers
SEVERITY_COLORS = {"bad": "#d62728", "warn": "#ff7f0e", "info": "#1f77b4", "ok": "#2ca02c"}
_MARGIN = {"l": 50, "r": 20, "t": 40, "b": 40}


def _with_x(frame: pl.DataFrame, x: str) -> pl.DataFrame:
    if x == "time" and "time_ms" in frame.columns:
        return frame.with_columns((pl.col("time_ms") / 60_000).alias("time_min"))
    return frame


def loss_figure(
    train: pl.DataFrame,
    val: pl.DataFrame,
    x: str = "step",
    show_train: bool = True,
    show_val: bool = True,
    smoothed: bool = False,
    log_y: bool = False,
) -> go.Figure:
    """Train (raw faint + smoothed) and val curves of several runs on one x axis."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    col, title = X_AXES[x]
    fig = go.Figure()
    run_ids = list(dict.fromkeys([*_ids(train), *_ids(val)]))
    colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(run_ids)}
    if show_train and not train.is_empty():
        for (run_id,), part in _with_x(train, x).group_by(["run_id"], maintain_order=True):
            color = colors[run_id]
            xs = part[col].to_numpy()
            fig.add_trace(go.Scatter(
                x=xs, y=part["loss"].to_numpy(), mode="lines", name=f"{run_id} train",
                legendgroup=run_id, line={"color": color, "width": 1},
                opacity=0.3 if smoothed else 0.9, showlegend=not smoothed,
            ))
            if smoothed and "loss_smooth" in part.columns:
                fig.add_trace(go.Scatter(
                    x=xs, y=part["loss_smooth"].to_numpy(), mode="lines", name=f"{run_id} train (smoothed)",
                    legendgroup=run_id, line={"color": color, "width": 2},
                ))
    if show_val and not val.is_empty():
        for (run_id,), part in _with_x(val, x).group_by(["run_id"], maintain_order=True):
            fig.add_trace(go.Scatter(
                x=part[col].to_numpy(), y=part["val_loss"].to_numpy(), mode="lines+markers",
                name=f"{run_id} val", legendgroup=run_id,
                line={"color": colors[run_id], "width": 2, "dash": "dot"}, marker={"size": 5},
            ))
    fig.update_layout(
        xaxis_title=title, yaxis_title="loss (nats)", margin=_MARGIN, height=480,
        legend={"orientation": "h", "y": -0.2}, hovermode="x unified",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _ids(frame: pl.DataFrame) -> list[str]:
    return [] if frame.is_empty() else frame["run_id"].unique(maintain_order=True).to_list()


def expert_heatmap(matrix: np.ndarray, family: str, step: int, focus_layer: int | None = None) -> go.Figure:
    """Layer x expert heatmap (layer 0 on top) of served load, demand or importance at one step."""
    n_layers, n_experts = matrix.shape
    fig = go.Figure(go.Heatmap(
        z=matrix, x=np.arange(n_experts), y=np.arange(n_layers), colorscale="Viridis", zmin=0.0,
        zmax=float(np.nanmax(matrix)) if matrix.size and np.isfinite(matrix).any() else 1.0,
        colorbar={"title": {"text": "share"}},
        hovertemplate="layer %{y}, expert %{x}: %{z:.3f}<extra></extra>",
    ))
    if focus_layer is not None and 0 <= focus_layer < n_layers:
        fig.add_shape(type="rect", x0=-0.5, x1=n_experts - 0.5, y0=focus_layer - 0.5, y1=focus_layer + 0.5,
                      line={"color": "#d62728", "width": 3})
    fig.update_layout(
        title={"text": f"{FAMILY_TITLES.get(family, family)} at step {step:,}"},
        xaxis={"title": "expert", "dtick": 1 if n_experts <= 32 else None},
        yaxis={"title": "layer", "autorange": "reversed", "dtick": 1 if n_layers <= 32 else None},
        height=max(300, 15 * n_layers + 110), margin=_MARGIN,
    )
    return fig


def _vline(step: float, yref: str = "paper") -> dict:
    return {"type": "line", "xref": "x", "yref": yref, "x0": step, "x1": step, "y0": 0, "y1": 1,
            "line": {"color": "#444", "dash": "dash", "width": 1}}


def layer_lines(
    lines: pl.DataFrame,
    metric: str,
    step: int | None = None,
    focus_layer: int | None = None,
    focus_range: tuple[int, int] | None = None,
    height: int = 300,
) -> go.Figure:
    """One line per layer of a router metric over steps; the chosen step, layer and step range marked.

    Built in one `go.Figure(...)` call with plain shapes: plotly validates a figure once per call, and
    `add_trace` / `add_vline` per layer would multiply that cost on deep models."""
    traces = []
    for (layer,), part in lines.group_by(["layer"], maintain_order=True):
        focused = focus_layer is not None and layer == focus_layer
        dimmed = focus_layer is not None and not focused
        line: dict = {"width": 3 if focused else 1.2}
        if focused:
            line["color"] = "#d62728"
        traces.append({
            "type": "scatter", "x": part["step"].to_numpy(), "y": part[metric].to_numpy(), "mode": "lines",
            "name": f"layer {layer}", "line": line, "opacity": 0.35 if dimmed else 1.0,
        })
    legend = len(traces) <= LEGEND_MAX_LAYERS
    shapes = []
    if focus_range is not None:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": focus_range[0],
                       "x1": focus_range[1], "y0": 0, "y1": 1, "fillcolor": "#d62728", "opacity": 0.08,
                       "line": {"width": 0}})
    if step is not None:
        shapes.append(_vline(step))
    return go.Figure(data=traces, layout={
        "title": {"text": METRIC_TITLES.get(metric, metric), "font": {"size": 14}},
        "xaxis": {"title": {"text": "step"}}, "height": height + (30 if legend else 0), "margin": _MARGIN,
        "showlegend": legend, "legend": {"orientation": "h", "y": -0.3}, "shapes": shapes,
    })


def served_vs_demanded(load: np.ndarray, demand: np.ndarray, layer: int | None, step: int) -> go.Figure:
    """Per-expert served vs demanded share at one step: one layer, or the mean over layers."""
    if layer is None:
        served, demanded, where = np.nanmean(load, axis=0), np.nanmean(demand, axis=0), "mean over layers"
    else:
        served, demanded, where = load[layer], demand[layer], f"layer {layer}"
    n = served.shape[0]
    experts = np.arange(n)
    shapes = []
    if n:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": 1.0 / n,
                       "y1": 1.0 / n, "line": {"dash": "dot", "color": "#666", "width": 1}})
    return go.Figure(
        data=[
            {"type": "bar", "x": experts, "y": demanded, "name": "demanded", "marker": {"color": "#ff7f0e"}},
            {"type": "bar", "x": experts, "y": served, "name": "served", "marker": {"color": "#1f77b4"}},
        ],
        layout={
            "barmode": "group",
            "title": {"text": f"served vs demanded, {where}, step {step:,}"},
            "xaxis": {"title": {"text": "expert"}, "dtick": 1},
            "yaxis": {"title": {"text": "share of assignments"}}, "height": 320, "margin": _MARGIN,
            "legend": {"orientation": "h", "y": 1.12}, "shapes": shapes,
            "annotations": [{"text": "1/E", "xref": "paper", "yref": "y", "x": 1, "y": 1.0 / n,
                             "xanchor": "right", "yanchor": "bottom", "showarrow": False}] if n else [],
        },
    )


SCHEDULE_TITLES = {"active_experts": "active experts (activation schedule)",
                   "router_temp": "router temperature", "logit_cap": "logit cap"}


def schedule_figure(frame: pl.DataFrame, step: int | None = None) -> go.Figure:
    """Active experts, router temperature and logit cap over steps, stacked panels on one step axis."""
    rows = [c for c in SCHEDULE_TITLES
            if c in frame.columns and frame[c].is_not_null().any()]
    n = max(1, len(rows))
    gap = 0.08
    size = (1 - gap * (n - 1)) / n
    traces, layout = [], {"height": 110 + 130 * n, "margin": _MARGIN, "showlegend": False,
                          "xaxis": {"title": {"text": "step"}}}
    annotations, shapes = [], []
    steps = frame["step"].to_numpy() if not frame.is_empty() else np.zeros(0)
    for i, col in enumerate(rows):
        axis = "y" if i == 0 else f"y{i + 1}"
        top = 1 - i * (size + gap)
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = {"domain": [top - size, top], "anchor": "x"}
        traces.append({"type": "scatter", "x": steps, "y": frame[col].to_numpy(), "mode": "lines",
                       "name": col, "yaxis": axis,
                       "line": {"shape": "hv" if col == "active_experts" else "linear"}})
        annotations.append({"text": SCHEDULE_TITLES[col], "xref": "paper", "yref": "paper", "x": 0.5,
                            "y": top, "yanchor": "bottom", "showarrow": False})
    if not rows:
        annotations.append({"text": "no schedule columns logged", "xref": "paper", "yref": "paper",
                            "x": 0.5, "y": 0.5, "showarrow": False})
    if step is not None:
        shapes.append(_vline(step))
    layout["xaxis"]["anchor"] = f"y{n}" if n > 1 else "y"  # step ticks under the bottom panel only
    layout["annotations"] = annotations
    layout["shapes"] = shapes
    return go.Figure(data=traces, layout=layout)


def layer_step_heatmap(lines: pl.DataFrame, metric: str, zmin: float | None = None,
                       zmax: float | None = None, colorscale: str = "RdYlGn") -> go.Figure:
    """A layer x step heatmap of one per-layer metric (the bucket means of `router_lines`)."""
    wide = lines.pivot(on="layer", index="step", values=metric, sort_columns=True).sort("step")
    layer_cols = [c for c in wide.columns if c != "step"]
    z = wide.select(layer_cols).to_numpy().T if layer_cols else np.zeros((0, 0))
    fig = go.Figure(go.Heatmap(
        z=z, x=wide["step"].to_numpy(), y=[int(c) for c in layer_cols], colorscale=colorscale,
        zmin=zmin, zmax=zmax, hovertemplate="layer %{y}, step %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(
        title={"text": f"{METRIC_TITLES.get(metric, metric)} per layer over steps"},
        xaxis_title="step", yaxis={"title": "layer", "autorange": "reversed"},
        height=max(260, 14 * len(layer_cols) + 120), margin=_MARGIN,
    )
    return fig


def domain_heatmaps(frame: pl.DataFrame, value: str, domains: Sequence[str]) -> go.Figure:
    """One layer x expert heatmap per domain (side by side) of `frac_of_domain` or `frac_of_expert`."""
    fig = make_subplots(rows=1, cols=max(1, len(domains)), subplot_titles=list(domains) or [""],
                        shared_yaxes=True, horizontal_spacing=0.03)
    zmax = float(frame[value].max() or 1.0) if not frame.is_empty() else 1.0
    for i, domain in enumerate(domains, start=1):
        part = frame.filter(pl.col("domain") == domain)
        wide = part.pivot(on="expert", index="layer", values=value, sort_columns=True).sort("layer")
        experts = [c for c in wide.columns if c != "layer"]
        fig.add_trace(go.Heatmap(
            z=wide.select(experts).to_numpy(), x=[int(e) for e in experts], y=wide["layer"].to_numpy(),
            colorscale="Viridis", zmin=0, zmax=zmax, showscale=i == len(domains),
            hovertemplate=f"{domain}: layer %{{y}}, expert %{{x}}: %{{z:.3f}}<extra></extra>",
        ), row=1, col=i)
        fig.update_xaxes(title_text="expert", row=1, col=i)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=1)
    n_layers = frame["layer"].n_unique() if not frame.is_empty() else 1
    fig.update_layout(height=max(300, 22 * n_layers + 120), margin=_MARGIN)
    return fig


def specialization_lines(frame: pl.DataFrame) -> go.Figure:
    """Per-layer domain specialisation over the measured steps: NMI = I(domain; expert) / min(H(domain),
    H(expert)) (docs/log-format.md §5)."""
    fig = go.Figure()
    for (layer,), part in frame.group_by(["layer"], maintain_order=True):
        fig.add_trace(go.Scatter(x=part["step"].to_numpy(), y=part["specialization"].to_numpy(),
                                 mode="lines+markers", name=f"layer {layer}"))
    fig.update_layout(
        title={"text": "domain specialisation: NMI = I(domain; expert) / min(H(domain), H(expert))"},
        xaxis_title="step",
        yaxis={"title": "NMI (0 = none, 1 = each expert serves one domain)", "range": [0, 1]},
        height=340, margin=_MARGIN,
    )
    return fig


SWEEP_BANDS = {"minmax": "min–max over seeds", "ci": "95% CI of the mean (Student t)"}


def sweep_band_frame(curves: pl.DataFrame, value: str = "val_loss") -> pl.DataFrame:
    """Per (variant, step): n seeds, mean, min, max and the 95% CI half-width (null for one seed) of
    ``value``; ``curves`` has one row per (variant, seed, step)."""
    from sb_analysis.compare_stats import t_ppf

    stats = (
        curves.filter(pl.col(value).is_not_null() & pl.col(value).is_finite())
        .group_by(["variant", "step"], maintain_order=True)
        .agg(pl.len().alias("n"), pl.col(value).mean().alias("mean"), pl.col(value).min().alias("min"),
             pl.col(value).max().alias("max"), pl.col(value).std().alias("std"))
        .sort(["variant", "step"])
    )
    t = {n: t_ppf(0.975, n - 1) for n in set(stats["n"].to_list()) if n >= 2}
    half = [None if n < 2 or s is None else t[n] * s / n**0.5
            for n, s in stats.select("n", "std").iter_rows()]
    return stats.with_columns(pl.Series("ci", half, dtype=pl.Float64))


def sweep_figure(bands: pl.DataFrame, variants: Sequence[str], band: str = "minmax",
                 y_title: str = "val loss") -> go.Figure:
    """One mean line per variant with a shaded band (min–max over seeds, or the mean's 95% CI)."""
    if band not in SWEEP_BANDS:
        raise ValueError(f"band must be one of {', '.join(SWEEP_BANDS)}, not {band!r}")
    fig = go.Figure()
    for i, variant in enumerate(variants):
        part = bands.filter(pl.col("variant") == variant)
        if part.is_empty():
            continue
        color = PALETTE[i % len(PALETTE)]
        if band == "minmax":
            low, high = part["min"], part["max"]
        else:
            low, high = part["mean"] - part["ci"].fill_null(0.0), part["mean"] + part["ci"].fill_null(0.0)
        steps = part["step"].to_list()
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=high.to_list() + low.to_list()[::-1], fill="toself",
                                 fillcolor=color, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                                 name=f"{variant} band", legendgroup=variant, showlegend=False))
        fig.add_trace(go.Scatter(x=steps, y=part["mean"].to_list(), mode="lines+markers", name=variant,
                                 legendgroup=variant, line={"color": color},
                                 customdata=part["n"].to_list(),
                                 hovertemplate="step %{x}<br>mean %{y:.4f}<br>%{customdata} seed(s)"))
    fig.update_layout(margin=_MARGIN, xaxis_title="step",
                      yaxis_title=f"{y_title} (mean, {SWEEP_BANDS[band]})", legend_title_text="variant")
    return fig
