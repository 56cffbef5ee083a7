"""Escaped HTML for token contexts and the Plotly figures the pages draw. No Streamlit here."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

DENSITY_BUCKETS = [
    (-np.inf, -5.0, "ultralow (<1e-5)"),
    (-5.0, -4.0, "1e-5..1e-4"),
    (-4.0, -3.0, "1e-4..1e-3"),
    (-3.0, -2.0, "1e-3..1e-2"),
    (-2.0, -1.0, "1e-2..1e-1"),
    (-1.0, 0.01, "dense (>1e-1)"),
]
"""log10-density buckets shared by the labeling queue, the interpretability page and the overview."""


def density_bucket(log10_density: float | None) -> str:
    if log10_density is None or not np.isfinite(log10_density):
        return "dead"
    for lo, hi, name in DENSITY_BUCKETS:
        if lo <= log10_density < hi:
            return name
    return DENSITY_BUCKETS[-1][2]


def bucket_order() -> list[str]:
    return ["dead"] + [b[2] for b in DENSITY_BUCKETS]


def _show(tok: str) -> str:
    # Make whitespace visible without letting it break the layout.
    return tok.replace("\n", "↵").replace("\t", "⇥").replace(" ", "\u00a0") or "\u2205"


def tokens_html(tokens: list[str], acts: np.ndarray, scale: float, focus: int | None = None) -> str:
    """One context as inline spans shaded by activation / scale; hovering shows the value.

    Every token is HTML-escaped: corpus text is data, never markup.
    """
    scale = float(scale) if scale and scale > 0 else 1.0
    parts = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        alpha = min(max(float(a) / scale, 0.0), 1.0)
        # inline-block: a long context wraps between tokens instead of running off the page
        style = f"display: inline-block; background: rgba(255, 120, 0, {alpha:.2f});"
        if i == focus:
            style += " outline: 1px solid #444; font-weight: 600;"
        parts.append(
            f'<span class="tok" style="{style}" title="{html.escape(tok, quote=True)} : {float(a):.4g}">'
            f"{html.escape(_show(tok))}</span>"
        )
    return (
        '<div class="ctx" style="font-family: monospace; line-height: 1.9; margin: 2px 0;">' + "".join(parts) + "</div>"
    )


def escape(text: object) -> str:
    return html.escape("" if text is None else str(text))


# ---- figures ----


def density_histograms(df: pd.DataFrame, mode: str = "facet", dead: dict[str, int] | None = None) -> go.Figure:
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
    bin_width: float = 0.1,
) -> go.Figure:
    """One SAE's log10-density histogram; select a range with the box tool to filter the table.

    Binned here, not in the browser: ~80 bars travel instead of one value per feature.
    """
    fig = go.Figure()
    frames = [(d, n, c) for d, n, c in ((feats, names[0], "#1f77b4"), (overlay, names[1], "#ff7f0e")) if d is not None]
    logs = [d["log10_density"].dropna().to_numpy() for d, _, _ in frames]
    finite = np.concatenate(logs) if logs else np.array([])
    lo = np.floor((finite.min() if finite.size else -1.0) / bin_width) * bin_width
    edges = np.arange(lo, bin_width + 1e-9, bin_width)
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
    for i, (arch, g) in enumerate(saes.sort_values("layer").groupby("architecture", sort=True)):
        for j, (col, _) in enumerate(metrics):
            fig.add_trace(
                go.Scatter(
                    x=g["layer"],
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
    fig.update_xaxes(title_text="layer")
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
    edges = np.linspace(lo, hi, len(inner) + 1)
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
                mode="lines+markers",
                name=sae,
                error_y=dict(type="data", symmetric=False, array=g["hi"] - g["frac"], arrayminus=g["frac"] - g["lo"]),
                hovertext=[f"{k}/{n} interpretable" for k, n in zip(g["k"], g["n"])],
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
