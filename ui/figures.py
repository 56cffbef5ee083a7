"""Plotly figures the pages draw. No Streamlit here, so they are unit-tested."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from backend.density import LOG_BIN_WIDTH, activation_bin_edges, bucket_order, log_density_edges


def density_histograms(df: pd.DataFrame, mode: str = "facet") -> go.Figure:
    """log10-density histograms of several SAEs, one panel each ("facet") or overlaid."""
    df = df.assign(x=(df["bin_lo"] + df["bin_hi"]) / 2)
    labels = {"x": "log10 feature density", "n": "features"}
    if mode == "overlay":
        fig = px.line(df, x="x", y="n", color="sae", line_shape="hvh", labels=labels)
    else:
        n = df["sae"].nunique()
        cols = min(3, max(n, 1))
        fig = px.bar(
            df,
            x="x",
            y="n",
            facet_col="sae",
            facet_col_wrap=cols,
            labels=labels,
            facet_row_spacing=0.08 if n > cols else 0.03,
            height=max(300, 230 * ((n + cols - 1) // cols)),
        )
        fig.update_traces(marker_line_width=0)
        fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
        fig.update_yaxes(matches=None, showticklabels=True)
    fig.update_layout(bargap=0.02, margin=dict(t=40, l=10, r=10, b=10))
    return fig


def layer_histogram(
    feats: pd.DataFrame,
    overlay: pd.DataFrame | None = None,
    names=("sae", "overlay"),
    selected: tuple[float, float] | None = None,
    marker: float | None = None,
    bin_width: float = LOG_BIN_WIDTH,
) -> go.Figure:
    """One SAE's log10-density histogram; select a range with the box tool to filter the table.

    Binned here, not in the browser: ~80 bars travel instead of one value per feature.
    """
    fig = go.Figure()
    frames = [(d, n, c) for d, n, c in ((feats, names[0], "#1f77b4"), (overlay, names[1], "#ff7f0e")) if d is not None]
    logs = [d["log10_density"].dropna().to_numpy() for d, _, _ in frames]
    edges = log_density_edges(np.concatenate(logs) if logs else np.array([]), bin_width)
    for (_, name, color), x in zip(frames, logs):
        counts, _ = np.histogram(x, bins=edges)
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=counts,
                width=bin_width,
                name=name,
                marker_color=color,
                marker_line_width=0,
                opacity=0.75 if overlay is not None else 1.0,
                hovertemplate="log10 density %{x:.2f}: %{y} features<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="overlay",
        xaxis_title="log10 feature density",
        yaxis_title="features",
        dragmode="select",
        selectdirection="h",
        height=320,
        margin=dict(t=20, l=10, r=10, b=10),
        showlegend=overlay is not None,
    )
    if selected is not None:
        fig.add_vrect(x0=selected[0], x1=selected[1], fillcolor="gray", opacity=0.15, line_width=0)
    if marker is not None:
        fig.add_vline(x=marker, line_color="red", line_width=2, annotation_text="this feature")
    return fig


def metric_lines(saes: pd.DataFrame) -> go.Figure:
    """Per-SAE metrics against depth, one line per architecture."""
    from plotly.subplots import make_subplots

    metrics = [
        ("explained_variance", "explained variance"),
        ("l0", "L0"),
        ("downstream_value", "downstream recovered"),
        ("dead_frac", "dead fraction"),
        ("dense_frac", "dense fraction (>10%)"),
    ]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.05)
    colors = px.colors.qualitative.Plotly
    for i, (arch, g) in enumerate(saes.sort_values("depth").groupby("architecture", sort=True)):
        for j, (col, _) in enumerate(metrics):
            fig.add_trace(
                go.Scatter(
                    x=g["depth"],
                    y=g[col],
                    mode="lines+markers",
                    name=arch,
                    legendgroup=arch,
                    showlegend=j == 0,
                    line_color=colors[i % len(colors)],
                    hovertext=g["sae"],
                ),
                row=1,
                col=j + 1,
            )
    fig.update_xaxes(title_text="depth (block; resid_pre of block L at L - 0.5)")
    fig.update_layout(height=300, margin=dict(t=40, l=10, r=10, b=10))
    return fig


def position_error(df: pd.DataFrame) -> go.Figure:
    fig = px.line(
        df, x="pos", y="rel_error", color="sae", labels={"pos": "token position", "rel_error": "||x - x̂||² / ||x||²"}
    )
    fig.update_layout(height=320, margin=dict(t=20, l=10, r=10, b=10))
    return fig


def activation_histogram(hist: np.ndarray, lo: float, hi: float) -> go.Figure:
    """A feature's nonzero activations on log-spaced bins (under/overflow bins at the ends)."""
    inner = hist[1:-1]
    edges = activation_bin_edges(lo, hi, len(inner))
    centers = 10 ** ((edges[:-1] + edges[1:]) / 2)
    nz = np.nonzero(inner)[0]
    fig = go.Figure()
    if nz.size:
        a, b = max(nz[0] - 1, 0), min(nz[-1] + 2, len(inner))
        fig.add_trace(
            go.Bar(
                x=centers[a:b], y=inner[a:b], marker_color="#ff7800", marker_line_width=0, width=np.diff(10**edges)[a:b]
            )
        )
    fig.update_xaxes(type="log", title="activation")
    fig.update_layout(yaxis_title="tokens", height=260, margin=dict(t=10, l=10, r=10, b=10), bargap=0)
    return fig


def interpretability_chart(df: pd.DataFrame) -> go.Figure:
    """Fraction interpretable per density bucket with binomial (Wilson) intervals, one line per SAE."""
    fig = go.Figure()
    for sae, g in df.groupby("sae", sort=False):
        fig.add_trace(
            go.Scatter(
                x=g["bucket"],
                y=g["frac"],
                mode="markers",  # buckets are categories: no line between them
                name=sae,
                error_y=dict(type="data", symmetric=False, array=g["hi"] - g["frac"], arrayminus=g["frac"] - g["lo"]),
                hovertext=[f"{k} of {n} features interpretable" for k, n in zip(g["k"], g["n"])],
            )
        )
    fig.update_layout(
        yaxis=dict(title="fraction interpretable", range=[0, 1.05]),
        xaxis_title="density bucket",
        height=340,
        margin=dict(t=20, l=10, r=10, b=10),
    )
    fig.update_xaxes(categoryorder="array", categoryarray=bucket_order())
    return fig
