"""Plotly figures the pages draw. No Streamlit here, so they are unit-tested.

Conventions every chart keeps: an SAE's colour says its depth (one sequential scale, shallow to
deep) and its line style its architecture; TopK and ReLU SAEs of the same hook sit side by side;
density histograms mark the dense cut (10%) and the resolution floor (1 / tokens, below which no
density can be measured); log axes carry full tick labels.
"""

from __future__ import annotations

import functools
import html
import math
import re
import secrets
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.density import (
    DENSE,
    LOG_BIN_WIDTH,
    ULTRALOW,
    activation_bin_edges,
    bucket_order,
    is_dense,
    log_density_edges,
)
from backend.engine.clusters import TAIL_COSINE
from ui import margins

# ---- text in figures is data: `plain` escapes it all, except the markup this module writes ----

_NONCE = secrets.token_hex(8)
"""marks this process's own markup; a string in a database cannot know it"""
_OPEN, _CLOSE = f"\ue000{_NONCE}", f"{_NONCE}\ue001"
_OWN_TAG = re.compile(re.escape(html.escape(_OPEN)) + "(.*?)" + re.escape(html.escape(_CLOSE)))


def tag(name: str) -> str:
    """Markup of our own (`br`, `extra`, `/extra`, `a href='…'`) that `plain` lets through."""
    return f"{_OPEN}{name}{_CLOSE}"


BR = tag("br")


def extra(text: str = "") -> str:
    """A hover label's secondary box (Plotly's <extra>); empty hides the trace name."""
    return tag("extra") + text + tag("/extra")


def _esc(s: str) -> str:
    return _OWN_TAG.sub(lambda m: "<" + html.unescape(m.group(1)) + ">", html.escape(s, quote=False))


def _esc_any(v):
    """Strings (alone, or in lists / arrays of any depth) escaped; numbers left as they are."""
    if isinstance(v, str):
        return _esc(v)
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biufcmM":
            return v
        return np.vectorize(_esc_any, otypes=[object])(v) if v.size else v
    if isinstance(v, list | tuple):
        return [_esc_any(x) for x in v]
    return v


_TRACE_TEXT = ("name", "text", "hovertext", "customdata", "x", "y", "labels", "hovertemplate", "texttemplate")
_NESTED_TEXT = (("legendgrouptitle", "text"), ("colorbar", "title", "text"), ("marker", "colorbar", "title", "text"))


def _dig(d: dict, path: tuple[str, ...]):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def plain(fig: go.Figure) -> go.Figure:
    """Every string a figure shows, escaped: Plotly renders HTML (links, styles) in names,
    titles, ticks, hover text and annotations, and SAE names, architectures and hooks come from
    a database file that people pass around. Call on every figure before it is drawn."""
    if getattr(fig, "_shared", False):  # escaped once, when `shared` built it
        return fig
    raws = []
    for trace in fig.data:
        # what a trace has set is read from its own dict: asking Plotly for a property a trace type
        # lacks raises after ranking every valid name by edit distance (1-2 ms a miss, 0.1 s a page)
        raw = trace.to_plotly_json()
        raws.append(dict(raw, type=trace.type))
        for key in _TRACE_TEXT:
            if raw.get(key) is not None:
                trace[key] = _esc_any(raw[key])
        for path in _NESTED_TEXT:
            t = _dig(raw, path)
            if isinstance(t, str) and t:
                trace[".".join(path)] = _esc(t)
    lay = fig.layout
    if lay.title.text:
        lay.title.text = _esc(lay.title.text)
    if lay.legend.title.text:
        lay.legend.title.text = _esc(lay.legend.title.text)
    for ax in [*fig.select_xaxes(), *fig.select_yaxes()]:
        if ax.title.text:
            ax.title.text = _esc(ax.title.text)
        if ax.ticktext is not None:
            ax.ticktext = _esc_any(ax.ticktext)
        if ax.categoryarray is not None:
            ax.categoryarray = _esc_any(ax.categoryarray)
    for c in fig.select_coloraxes():
        if c.colorbar.title.text:
            c.colorbar.title.text = _esc(c.colorbar.title.text)
    for a in lay.annotations:
        if a.text:
            a.text = _esc(a.text)
        for key in ("x", "y"):
            if isinstance(a[key], str):
                a[key] = _esc(a[key])
    for sh in lay.shapes:
        if sh.label.text:
            sh.label.text = _esc(sh.label.text)
    margins.fit(fig, raws)  # measured on the text as shown, before escaping
    return fig


SHARED_MAX = 64


def _identity(v):
    """A memo key for one argument: values as they are, frames, arrays and containers by identity."""
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, tuple) and all(x is None or isinstance(x, str | int | float | bool) for x in v):
        return v
    return ("id", id(v))


def shared(fn):
    """Memoise a figure builder on its arguments (frames by identity: the query layer hands every
    session the same cached frame until the database changes). Plotly validates every property it
    is given, so a figure costs 50-200 ms to build on each run of a page, for every reader;
    a kept one costs its serialisation only. The figure is escaped (plain) once, here, and every
    session draws the same object: nothing may change it after."""
    memo: OrderedDict = OrderedDict()
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        key = (tuple(map(_identity, args)), tuple(sorted((k, _identity(v)) for k, v in kw.items())))
        with lock:
            hit = memo.get(key)
            if hit is not None:
                memo.move_to_end(key)
                return hit[0]
        fig = plain(fn(*args, **kw))
        fig._shared = True
        with lock:
            memo[key] = (fig, args, kw)  # the arguments are kept so their ids are not reused
            while len(memo) > SHARED_MAX:
                memo.popitem(last=False)
        return fig

    return wrapper


DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
DENSE_X = math.log10(DENSE)
ULTRALOW_X = math.log10(ULTRALOW)


def depth_colours(saes: pd.DataFrame) -> dict[str, str]:
    """sae -> colour on one sequential scale by depth (equal depths share a colour)."""
    depths = sorted(saes["depth"].unique())
    scale = px.colors.sample_colorscale("Viridis", [0.9 * i / max(len(depths) - 1, 1) for i in range(len(depths))])
    by_depth = dict(zip(depths, scale))
    return {r.sae: by_depth[r.depth] for r in saes.itertuples()}


def arch_dashes(saes: pd.DataFrame) -> dict[str, str]:
    return {a: DASHES[i % len(DASHES)] for i, a in enumerate(sorted(saes["architecture"].unique()))}


def short_hook(hook: str) -> str:
    """blocks.3.hook_resid_post -> 3.resid_post: enough to name a point on a depth axis."""
    return hook.replace("blocks.", "").replace("hook_", "")


def depth_axis(fig: go.Figure, saes: pd.DataFrame, **where) -> None:
    """Name hooks on a depth axis instead of bare numbers."""
    ticks = saes.drop_duplicates("depth").sort_values("depth")
    fig.update_xaxes(tickvals=list(ticks["depth"]), ticktext=[short_hook(h) for h in ticks["hook"]], **where)


def density_marks(fig: go.Figure, floor: float | None) -> None:
    """The dense cut, the ultralow cut and the resolution floor as vertical lines in every panel. Shapes are set
    in one go: add_vline(row="all") costs 80 ms a line on a 14-panel figure."""
    marks = [(DENSE_X, "#b22"), (ULTRALOW_X, "#26a")]
    marks += [(floor, "#555")] if floor is not None and np.isfinite(floor) else []
    axes = sorted(
        (k[len("xaxis") :] for k in fig.layout.to_plotly_json() if k.startswith("xaxis")), key=lambda n: int(n or 1)
    ) or [""]
    shapes = [
        dict(
            type="line",
            xref=f"x{n}",
            yref=f"y{n} domain",
            x0=x,
            x1=x,
            y0=0,
            y1=1,
            line=dict(dash="dot", color=colour, width=1),
        )
        for n in axes
        for x, colour in marks
    ]
    fig.update_layout(shapes=[*fig.layout.shapes, *shapes])


def rules(fig: go.Figure, lines: list[tuple], shapes: tuple[dict, ...] = ()) -> None:
    """Lines across a one-panel figure, each (axis "x" for vertical or "y", at, colour, width, dash,
    note, where the note goes: "top" or "top right", as add_vline / add_hline place them), and
    `shapes`, set in one go: add_vline and its kin cost 30 ms each."""
    out, notes = list(shapes), []
    for axis, at, colour, width, dash, note, where in lines:
        line = dict(color=colour, width=width) | (dict(dash=dash) if dash else {})
        if axis == "x":
            out.append(dict(type="line", xref="x", yref="y domain", x0=at, x1=at, y0=0, y1=1, line=line))
            place = dict(x=at, xref="x", y=1, yref="y domain")
            place |= dict(xanchor="center", yanchor="bottom") if where == "top" else dict(xanchor="left", yanchor="top")
        else:
            out.append(dict(type="line", xref="x domain", yref="y", x0=0, x1=1, y0=at, y1=at, line=line))
            place = dict(x=1, xref="x domain", y=at, yref="y", yanchor="bottom")
            place |= dict(xanchor="center") if where == "top" else dict(xanchor="right")
        if note:
            notes.append(dict(text=note, showarrow=False) | place)
    fig.update_layout(shapes=out, annotations=notes)


def _mark_legend(fig: go.Figure, floor: float | None) -> None:
    """Legend entries for the two lines (vlines have none of their own)."""
    lines = (
        (f"dense cut ({DENSE:.0%})", "#b22"),
        (f"ultralow cut ({ULTRALOW:g})", "#26a"),
        ("resolution floor (1 / tokens)", "#555"),
    )
    for name, colour in lines:
        if "floor" in name and floor is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="lines", line=dict(dash="dot", color=colour), name=name, hoverinfo="skip"
            )
        )


FACET_MAX = 12
"""past this many SAEs the Overview's histograms default to one heatmap row per SAE: 27 panels made a
4,000-px figure that took 2 s to draw in a browser"""


@shared
def density_histograms(df: pd.DataFrame, saes: pd.DataFrame, mode: str = "facet", floor: float | None = None):
    """log10-density histograms of all SAEs: one panel per hook (rows, by depth) and architecture
    (columns), overlaid with colour by depth and line style by architecture, or (heatmap) one row
    per hook in a panel per architecture, coloured by each SAE's share of its live features."""
    df = df.assign(x=(df["bin_lo"] + df["bin_hi"]) / 2)
    colours, dashes = depth_colours(saes), arch_dashes(saes)
    order = saes.sort_values(["depth", "sae"])
    if mode == "heatmap":
        return _density_heatmap(df, order, floor)
    if mode == "overlay":
        fig = go.Figure()
        for r in order.itertuples():
            g = df[df["sae"] == r.sae]
            fig.add_trace(
                go.Scatter(
                    x=g["x"],
                    y=g["n"],
                    mode="lines",
                    line_shape="hvh",
                    name=f"{short_hook(r.hook)} · {r.architecture}",
                    line=dict(color=colours[r.sae], dash=dashes[r.architecture]),
                    hovertemplate=f"{r.sae}{BR}log10 density %{{x:.2f}}: %{{y}} features{extra()}",
                )
            )
        density_marks(fig, floor)
        _mark_legend(fig, floor)
        fig.update_layout(height=420, xaxis_title="log10 feature density", yaxis_title="features")
    else:
        hooks = list(order.drop_duplicates("hook")["hook"])
        archs = sorted(saes["architecture"].unique())
        fig = make_subplots(
            rows=len(hooks),
            cols=len(archs),
            shared_xaxes=True,
            column_titles=archs,
            row_titles=[short_hook(h) for h in hooks],
            vertical_spacing=0.02 if len(hooks) > 4 else 0.06,
            horizontal_spacing=0.04,
        )
        for r in order.itertuples():
            g = df[df["sae"] == r.sae]
            fig.add_trace(
                go.Bar(
                    x=g["x"],
                    y=g["n"],
                    width=LOG_BIN_WIDTH,
                    marker_color=colours[r.sae],
                    marker_line_width=0,
                    name=r.sae,
                    showlegend=False,
                    hovertemplate=f"{r.sae}{BR}log10 density %{{x:.2f}}: %{{y}} features{extra()}",
                ),
                row=hooks.index(r.hook) + 1,
                col=archs.index(r.architecture) + 1,
            )
        density_marks(fig, floor)
        _mark_legend(fig, floor)
        fig.update_xaxes(title_text="log10 feature density", row=len(hooks))
        fig.update_layout(height=max(320, 150 * len(hooks)), bargap=0)
    # the legend above the plot: below it, it covered the x axis's title
    fig.update_layout(margin=dict(t=70, l=10, r=10, b=10), legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def _density_heatmap(df: pd.DataFrame, order: pd.DataFrame, floor: float | None) -> go.Figure:
    """One row per SAE, named by its hook (and by itself where two SAEs of one architecture share a hook)."""
    archs = sorted(order["architecture"].unique())
    shared = order.duplicated(["hook", "architecture"], keep=False)
    labels = [f"{short_hook(h)} · {n}" if d else short_hook(h) for h, n, d in zip(order["hook"], order["sae"], shared)]
    rows = list(dict.fromkeys(labels))  # by depth, as `order` is
    fig = make_subplots(rows=1, cols=len(archs), column_titles=archs, shared_yaxes=True, horizontal_spacing=0.03)
    xs = np.sort(df["x"].unique())
    for j, arch in enumerate(archs):
        z = np.full((len(rows), len(xs)), np.nan)
        names = np.full((len(rows), len(xs)), "", dtype=object)
        counts = np.zeros((len(rows), len(xs)))
        for r, label in zip(order.itertuples(), labels):
            if r.architecture != arch:
                continue
            g = df[df["sae"] == r.sae]
            i, cols = rows.index(label), np.searchsorted(xs, g["x"].to_numpy())
            total = g["n"].sum()
            counts[i, cols] = g["n"].to_numpy()
            z[i, cols] = g["n"].to_numpy() / total if total else 0.0
            names[i, :] = r.sae
        fig.add_trace(
            go.Heatmap(
                x=xs,
                y=rows,
                z=np.where(counts > 0, z, np.nan),
                customdata=np.dstack([counts, names]),
                colorscale="Viridis",
                coloraxis="coloraxis",
                hovertemplate=f"%{{customdata[1]}}{BR}log10 density %{{x:.2f}}: %{{customdata[0]:,}} features "
                f"(%{{z:.1%}}){extra()}",
            ),
            row=1,
            col=j + 1,
        )
    density_marks(fig, floor)
    _mark_legend(fig, floor)
    fig.update_xaxes(title_text="log10 feature density")
    fig.update_yaxes(autorange="reversed", col=1)
    fig.update_layout(
        height=max(320, 22 * len(rows) + 140),
        coloraxis=dict(colorscale="Viridis", colorbar=dict(title=f"share of its{BR}live features", tickformat=".0%")),
        margin=dict(t=70, l=10, r=10, b=10),
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    return fig


def layer_histogram(
    feats: pd.DataFrame,
    overlay: pd.DataFrame | None = None,
    names=("sae", "overlay"),
    selected: tuple[float, float] | None = None,
    marker: float | None = None,
    bin_width: float = LOG_BIN_WIDTH,
    floor: float | None = None,
) -> go.Figure:
    """One SAE's log10-density histogram; select a range with the box tool to filter the table.

    Binned here, not in the browser: ~80 bars travel instead of one value per feature.
    """
    fig = go.Figure()
    frames = [(d, n, c) for d, n, c in ((feats, names[0], "#1f77b4"), (overlay, names[1], "#ff7f0e")) if d is not None]
    logs = [d["log10_density"].dropna().to_numpy() for d, _, _ in frames]
    edges = log_density_edges(np.concatenate(logs) if logs else np.array([]), bin_width)
    if floor is not None and np.isfinite(floor) and floor < edges[0]:
        edges = log_density_edges(np.array([floor]), bin_width)
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
                hovertemplate="log10 density %{x:.2f}: %{y} features" + extra(),
            )
        )
    fig.update_layout(
        barmode="overlay",
        xaxis_title="log10 feature density",
        yaxis_title="features",
        dragmode="select",
        selectdirection="h",
        height=320,
        margin=dict(t=30, l=10, r=10, b=10),
        showlegend=overlay is not None,
    )
    lines = [("x", DENSE_X, "#b22", 1, "dot", "dense", "top")]
    if floor is not None and np.isfinite(floor):
        lines.append(("x", floor, "#555", 1, "dot", "floor (1 / tokens)", "top right"))
    if marker is not None:
        lines.append(("x", marker, "red", 2, None, "this feature", "top right"))
    band = (
        ()
        if selected is None
        else (
            dict(type="rect", xref="x", yref="y domain", x0=selected[0], x1=selected[1], y0=0, y1=1)
            | dict(fillcolor="gray", opacity=0.15, line_width=0),
        )
    )
    rules(fig, lines, band)
    return fig


@shared
def metric_lines(saes: pd.DataFrame) -> go.Figure:
    """Per-SAE metrics against depth (hooks named on the axis), one line style per architecture."""
    metrics = [
        ("explained_variance", "explained variance"),
        ("l0", "L0"),
        ("downstream_value", "downstream recovered"),
        ("dead_frac", "dead fraction"),
        ("dense_frac", f"dense fraction (>{DENSE:.0%})"),
    ]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.05)
    dashes, colours = arch_dashes(saes), depth_colours(saes)
    for arch, g in saes.sort_values("depth").groupby("architecture", sort=True):
        for j, (col, _) in enumerate(metrics):
            fig.add_trace(
                go.Scatter(
                    x=g["depth"],
                    y=g[col],
                    mode="lines+markers",
                    name=arch,
                    legendgroup=arch,
                    showlegend=j == 0,
                    line=dict(color="#333", dash=dashes[arch]),
                    marker=dict(color=[colours[s] for s in g["sae"]], size=8),
                    hovertext=g["sae"],
                ),
                row=1,
                col=j + 1,
            )
    depth_axis(fig, saes)
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    fig.update_layout(height=330, margin=dict(t=40, l=10, r=10, b=10))
    return fig


def position_error(df: pd.DataFrame, saes: pd.DataFrame) -> go.Figure:
    """Relative reconstruction error by token position: one panel per architecture, one line per
    hook coloured by depth."""
    colours = depth_colours(saes)
    archs = sorted(saes["architecture"].unique())
    fig = make_subplots(rows=1, cols=len(archs), subplot_titles=archs, shared_yaxes=True, horizontal_spacing=0.03)
    for r in saes.sort_values(["depth", "sae"]).itertuples():
        g = df[df["sae"] == r.sae]
        fig.add_trace(
            go.Scatter(
                x=g["pos"],
                y=g["rel_error"],
                mode="lines",
                name=short_hook(r.hook),
                legendgroup=r.hook,
                showlegend=r.architecture == archs[0],
                line=dict(color=colours[r.sae], width=1.5),
                hovertemplate=f"{r.sae}{BR}position %{{x}}: %{{y:.3f}}{extra()}",
            ),
            row=1,
            col=archs.index(r.architecture) + 1,
        )
    contexts = sorted({int(c) for c in saes.get("train_context", pd.Series(dtype=float)).dropna()})
    for c in contexts:  # where each SAE's training context ends
        fig.add_vline(x=c - 0.5, line_dash="dash", line_color="#b22", line_width=1)
    if contexts:
        fig.add_annotation(
            x=contexts[0] - 0.5, y=1, yref="paper", text="training context ends", showarrow=False, xanchor="left"
        )
    fig.update_xaxes(title_text="token position")
    fig.update_yaxes(title_text="Σ‖x − x̂‖² / Σ‖x‖²", col=1)
    fig.update_layout(height=340, margin=dict(t=30, l=10, r=10, b=10), legend_title_text="hook (by depth)")
    return fig


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick values and full labels at 1, 2, 5 per decade between 10**lo and 10**hi."""
    vals = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    vals = [v for v in vals if 10**lo <= v <= 10**hi]
    return vals, [f"{v:g}" for v in vals]


def activation_histogram(hist: np.ndarray, lo: float, hi: float) -> go.Figure | None:
    """A feature's nonzero activations on log-spaced bins (under/overflow bins at the ends);
    None for a feature that never fired (there is nothing to draw)."""
    inner = hist[1:-1]
    nz = np.nonzero(inner)[0]
    if nz.size == 0:
        return None
    edges = activation_bin_edges(lo, hi, len(inner))
    centers = 10 ** ((edges[:-1] + edges[1:]) / 2)
    a, b = max(nz[0] - 1, 0), min(nz[-1] + 2, len(inner))
    fig = go.Figure(
        go.Bar(x=centers[a:b], y=inner[a:b], marker_color="#ff7800", marker_line_width=0, width=np.diff(10**edges)[a:b])
    )
    vals, text = log_ticks(edges[a], edges[b])
    fig.update_xaxes(type="log", title="activation", tickvals=vals, ticktext=text)
    fig.update_layout(yaxis_title="tokens", height=260, margin=dict(t=10, l=10, r=10, b=10), bargap=0)
    return fig


def position_profile(fire, act, tokens, width: int, seq_len: int) -> go.Figure | None:
    """How often a feature fires at each range of token positions (positions.py), against its
    rate over all positions (dashed); None for a feature that never fired."""
    from backend.positions import bucket_ranges

    fire, act, tokens = (np.asarray(a, dtype=np.float64) for a in (fire, act, tokens))
    if fire.sum() == 0:
        return None
    ranges = bucket_ranges(width, seq_len, len(fire))
    rate = np.divide(fire, tokens, out=np.full_like(fire, np.nan), where=tokens > 0)
    mean = np.divide(act, fire, out=np.zeros_like(act), where=fire > 0)
    overall = fire.sum() / tokens.sum()
    hover = [
        f"positions {lo}–{hi}: fires on {r:.2%} of {int(n):,} tokens ({int(k):,}){BR}mean activation {m:.3g}"
        if n
        else f"positions {lo}–{hi}: no counted token"
        for (lo, hi), r, n, k, m in zip(ranges, rate, tokens, fire, mean)
    ]
    fig = go.Figure(
        go.Bar(
            x=[(lo + hi) / 2 for lo, hi in ranges],
            y=rate,
            width=[hi - lo + 1 for lo, hi in ranges],
            marker_color="#ff7800",
            marker_line_width=0,
            hovertext=hover,
            hovertemplate=f"%{{hovertext}}{extra()}",
        )
    )
    rules(fig, [("y", overall, "#444", None, "dash", f"all positions: {overall:.2%}", "top right")])
    fig.update_xaxes(title="token position", range=[-0.5, seq_len - 0.5])
    fig.update_yaxes(title="fires on (share of tokens)", tickformat=".1%", rangemode="tozero")
    fig.update_layout(height=260, margin=dict(t=10, l=10, r=10, b=10), bargap=0)
    return fig


def interpretability_chart(df: pd.DataFrame) -> go.Figure:
    """Fraction of features judged interpretable per density bucket with Wilson intervals, one
    marker series per SAE, buckets from sparse to dense; no lines: buckets are categories."""
    fig = go.Figure()
    for sae, g in df.groupby("sae", sort=False):
        fig.add_trace(
            go.Scatter(
                x=g["bucket"],
                y=g["frac"],
                mode="markers+text",
                text=[f"n={n}" for n in g["n"]],
                textposition="middle right",
                name=sae,
                error_y=dict(type="data", symmetric=False, array=g["hi"] - g["frac"], arrayminus=g["frac"] - g["lo"]),
                hovertext=[f"{k} of {n} features interpretable" for k, n in zip(g["k"], g["n"])],
            )
        )
    fig.update_layout(
        yaxis=dict(title="fraction of features interpretable", range=[0, 1.05]),
        xaxis_title="density bucket",
        height=340,
        margin=dict(t=20, l=10, r=10, b=10),
    )
    fig.update_xaxes(categoryorder="array", categoryarray=bucket_order())
    return fig


def scores_against_verdicts(table: pd.DataFrame, threshold: float) -> go.Figure:
    """Per density bucket: the team's interpretable fraction (solid, over judged features) and
    the fraction of all scored features at or above the threshold (dashed: an extrapolation of
    the automatic score), each with Wilson intervals; buckets from sparse to dense."""
    fig = go.Figure()
    series = (
        ("frac", "lo", "hi", "n_judged", "the team's verdicts", "solid", "circle"),
        (
            "pass_frac",
            "pass_lo",
            "pass_hi",
            "n_scored",
            f"automatic: score ≥ {threshold:g} (extrapolated)",
            "dash",
            "diamond",
        ),
    )
    for col, lo, hi, n, name, dash, symbol in series:
        g = table[table[n] > 0]
        fig.add_trace(
            go.Scatter(
                x=g["bucket"],
                y=g[col],
                mode="lines+markers",
                name=name,
                line=dict(dash=dash),
                marker=dict(symbol=symbol, size=9),
                error_y=dict(type="data", symmetric=False, array=g[hi] - g[col], arrayminus=g[col] - g[lo]),
                hovertext=[f"{name}: {v:.2f} of {int(k)} features" for v, k in zip(g[col], g[n])],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        yaxis=dict(title="fraction interpretable", range=[0, 1.05]),
        xaxis_title="density bucket",
        height=340,
        margin=dict(t=20, l=10, r=10, b=10),
        legend=dict(orientation="h", y=1.12),
    )
    fig.update_xaxes(categoryorder="array", categoryarray=bucket_order())
    return fig


def context_ev(saes: pd.DataFrame, metric: str = "ev") -> go.Figure:
    """Per hook, explained variance (or relative error) inside each SAE's training context and
    beyond it: one panel per architecture, depth on the x axis with hooks named."""
    cols = ("ev_inside", "ev_beyond") if metric == "ev" else ("rel_error_inside", "rel_error_beyond")
    archs = sorted(saes["architecture"].unique())
    fig = make_subplots(rows=1, cols=len(archs), subplot_titles=archs, shared_yaxes=True, horizontal_spacing=0.04)
    for i, arch in enumerate(archs):
        g = saes[saes["architecture"] == arch].sort_values("depth")
        for col, name, dash in ((cols[0], "inside the training context", "solid"), (cols[1], "beyond it", "dash")):
            fig.add_trace(
                go.Scatter(
                    x=g["depth"],
                    y=g[col],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                    line=dict(color="#333" if dash == "solid" else "#b22", dash=dash),
                    hovertext=g["sae"],
                ),
                row=1,
                col=i + 1,
            )
    depth_axis(fig, saes)
    fig.update_xaxes(tickangle=-45)
    title = "explained variance" if metric == "ev" else "Σ‖x − x̂‖² / Σ‖x‖²"
    fig.update_yaxes(title_text=title, col=1)
    fig.update_layout(height=360, margin=dict(t=40, l=10, r=10, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def _harm_scale(lo: float, hi: float) -> dict:
    """Colours of a harm heatmap. One sign: white to red; both signs (a later SAE can reconstruct a
    perturbed stream better, a splice can lower the loss): blue below zero, red above, white at zero."""
    return dict(colorscale="RdBu_r", cmid=0.0) if lo < 0 < hi else dict(colorscale="Reds", cmin=min(lo, 0.0))


def output_cells(out: pd.DataFrame) -> pd.DataFrame:
    """The "model output" heatmap's cells: each SAE spliced alone, measured at the output, rows
    by the spliced SAE's own depth (taken before `depth` becomes the output's)."""
    alone = out[out["mode"] == "alone"]
    return alone.assign(spliced_depth=alone["depth"]).assign(hook="output", depth=np.inf)


def propagation_heatmap(
    df: pd.DataFrame, value: str, links: dict[str, str], fmt: str = ".3f", colorbar: str = ""
) -> go.Figure:
    """Rows: the spliced SAE (by its hook, shallow at the top); columns: where it is measured
    (`hook`); one panel per family, side by side. Every cell's text links to the spliced SAE's
    Layer page (`links`: sae -> relative URL, or None: no link); cells that do not apply stay blank."""
    fams = sorted(df["architecture"].unique())
    fig = make_subplots(rows=1, cols=len(fams), subplot_titles=fams, horizontal_spacing=0.14)
    finite = df[value].replace([np.inf, -np.inf], np.nan).dropna()
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    notes = []  # added at once: plotly checks every annotation already there on each add_annotation
    for c, fam in enumerate(fams, start=1):
        g = df[df["architecture"] == fam]
        rows = g.drop_duplicates("sae").sort_values(["spliced_depth", "sae"])
        cols = g.drop_duplicates("hook").sort_values("depth")["hook"].tolist()
        z = np.full((len(rows), len(cols)), np.nan)
        text = np.full(z.shape, "", dtype=object)
        hover = np.full(z.shape, "", dtype=object)
        index = {s: i for i, s in enumerate(rows["sae"])}
        for r in g.itertuples():
            i, j = index[r.sae], cols.index(r.hook)
            v = getattr(r, value)
            if v is None or not np.isfinite(v):
                continue
            z[i, j] = v
            shown = tag("span style='fill:{ink}'") + f"{v:{fmt}}" + tag("/span")
            href = links.get(r.sae)
            text[i, j] = tag(f"a href='{href}' target='_self'") + shown + tag("/a") if href else shown
            hover[i, j] = f"splice {r.sae}{BR}measured at {r.hook}: {v:{fmt}}" + (
                f"{BR}{r.detail}" if "detail" in g.columns else ""
            )
        ylabels = [short_hook(h) for h in rows["spliced_hook"]]
        xlabels = [short_hook(h) for h in cols]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=xlabels,
                y=ylabels,
                hovertext=hover,
                hovertemplate="%{hovertext}" + extra(),
                coloraxis="coloraxis",
                xgap=2,
                ygap=2,
            ),
            row=1,
            col=c,
        )
        # the values as annotations: those sit above the plot's drag layer, so their links click
        axis = "" if c == 1 else str(c)
        span = max(abs(lo), abs(hi), 1e-12)
        for (i, j), t in np.ndenumerate(text):
            if t:
                dark = abs(z[i, j]) > 0.6 * span  # white text on the strongest colours
                notes.append(
                    dict(
                        x=xlabels[j],
                        y=ylabels[i],
                        text=t.replace("{ink}", "#fff" if dark else "#111"),
                        showarrow=False,
                        xref=f"x{axis}",
                        yref=f"y{axis}",
                        font_size=11,
                    )
                )
        fig.update_yaxes(autorange="reversed", row=1, col=c)
    fig.update_layout(annotations=[*fig.layout.annotations, *notes])
    fig.update_xaxes(title_text="measured at hook", tickangle=-45)
    fig.update_yaxes(title_text="spliced SAE (hook)", col=1)
    fig.update_layout(
        coloraxis=dict(**_harm_scale(lo, hi), colorbar_title=colorbar),
        height=120 + 42 * max(df.groupby("architecture")["sae"].nunique().max(), 1),
        margin=dict(t=40, l=10, r=10, b=10),
    )
    return fig


def compounding(out: pd.DataFrame, saes: pd.DataFrame, ylabel: str) -> go.Figure:
    """Output harm against depth, per family: every SAE of the family up to that hook spliced
    at once (solid), next to that hook's SAE spliced alone (dotted)."""
    fig = go.Figure()
    dashes = arch_dashes(saes)
    palette = px.colors.qualitative.D3
    for k, (fam, g) in enumerate(out.groupby("family", sort=True)):
        for mode, style, name in (("compound", dashes.get(fam, "solid"), "all up to here"), ("alone", "dot", "alone")):
            h = g[g["mode"] == mode].sort_values("depth")
            if h.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=h["depth"],
                    y=h["harm"],
                    mode="lines+markers",
                    name=f"{fam}: {name}",
                    line=dict(color=palette[k % len(palette)], dash="dot" if mode == "alone" else style),
                    marker=dict(symbol="circle" if mode == "compound" else "circle-open", size=8),
                    customdata=h["n_spliced"],
                    hovertemplate=f"{fam} {name}{BR}%{{customdata}} SAE(s) spliced: %{{y:.4f}}{extra()}",
                )
            )
    depth_axis(fig, saes)
    fig.update_xaxes(tickangle=-45, title_text="deepest spliced hook")
    fig.update_yaxes(title_text=ylabel, rangemode="tozero")
    fig.update_layout(height=360, margin=dict(t=20, l=10, r=10, b=10), legend=dict(orientation="h", y=-0.35))
    return fig


def strength_curve(df: pd.DataFrame, y: str, ylabel: str, mark: float | None = None) -> go.Figure:
    """A steering figure against strength (multiples of the feature's max activation); the
    strength chosen above is marked."""
    fig = go.Figure(go.Scatter(x=df["strength"], y=df[y], mode="lines+markers", line=dict(color="#333")))
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dash", line_color="#b22", line_width=1)
    fig.update_layout(
        xaxis_title="strength (x max activation)", yaxis_title=ylabel, height=300, margin=dict(t=10, l=10, r=10, b=10)
    )
    return fig


VERDICT_COLOURS = {
    "interpretable": "#2a9d8f",
    "not interpretable": "#e76f51",
    "unsure/split": "#e9c46a",
    "unlabeled": "#d9d9d9",
}
VERDICT_SYMBOLS = {
    "interpretable": "diamond",
    "not interpretable": "x",
    "unsure/split": "square",
    "unlabeled": "circle",
}


def verdict_histogram(
    df: pd.DataFrame, floor: float | None = None, labeled_only: bool = False, log_count: bool = False
) -> go.Figure:
    """log10-density histogram of live features stacked by the team's verdict: the picture behind
    "high-density features are interpretable, ultralow ones are not", from this team's labels.
    `df`: log10_density and label ("" or NaN: unlabeled). The bins are those of every live
    feature, so the bars line up with the main histogram's even when only labeled ones are drawn;
    a few labels among thousands of features show with `labeled_only` or a log count axis."""
    live = df[np.isfinite(df["log10_density"])]
    edges = log_density_edges(live["log10_density"].to_numpy())
    centres = (edges[:-1] + edges[1:]) / 2
    labels = live["label"].fillna("").replace("", "unlabeled")
    fig = go.Figure()
    for verdict, colour in VERDICT_COLOURS.items():
        if labeled_only and verdict == "unlabeled":
            continue
        counts, _ = np.histogram(live.loc[labels == verdict, "log10_density"], bins=edges)
        fig.add_trace(
            go.Bar(x=centres, y=counts, width=np.diff(edges), name=verdict, marker_color=colour, marker_line_width=0)
        )
    fig.update_layout(barmode="stack", bargap=0, height=320, margin=dict(t=30, l=10, r=10, b=10))
    fig.update_xaxes(title_text="log10 feature density", range=[edges[0], edges[-1]])
    fig.update_yaxes(title_text="features" + (" (log)" if log_count else ""), type="log" if log_count else "linear")
    density_marks(fig, floor)
    return fig


SVG_POINTS = 4_000
"""up to this many points a scatter is SVG (scatter_type; past it WebGL), and the feature map
draws each feature as a point (past it, tiles). A browser draws points dearly: in headless
Chromium on 2 cores, 3,000 SVG markers took 0.9 s more than a 120 x 120 heatmap of all 65,536
features of a Gemma-scale SAE, a WebGL sample of 20,000 points 2.1 s more and one of 50,000
3.5 s more (the figure alone on a page, median of 5 loads)"""

MAP_TILES = 120
"""tiles per side of a wide SAE's feature map"""


def scatter_type(n: int):
    """go.Scatter for a scatter of n points a browser draws quickly as SVG, go.Scattergl past that."""
    return go.Scatter if n <= SVG_POINTS else go.Scattergl


OVERLAY_POINTS = 2_000
"""the most points a tiled map draws over its tiles"""


def map_overlay(df: pd.DataFrame, limit: int = OVERLAY_POINTS, seed: int = 0) -> pd.DataFrame:
    """The features a tiled map still draws as points: every labeled one, and the dense ones (a
    fixed sample of them where all would pass `limit`: the same for everyone who opens the view)."""
    labeled = (df["label"].fillna("") != "").to_numpy()
    dense = np.flatnonzero(is_dense(df["density"]).to_numpy() & ~labeled)
    room = max(0, limit - int(labeled.sum()))
    if len(dense) > room:
        dense = np.random.default_rng(seed).choice(dense, room, replace=False)
    return df.iloc[np.sort(np.concatenate([np.flatnonzero(labeled), dense]))]


def _map_points(fig: go.Figure, df: pd.DataFrame, lo: float, hi: float, colorbar: bool) -> None:
    """One SVG trace per verdict (and dead or not): coloured by log10 density, shaped by verdict,
    dense ringed; each point carries its feature id (customdata) for selection."""
    dead = ~np.isfinite(df["log10_density"])
    labels = df["label"].fillna("").replace("", "unlabeled")
    for verdict, symbol in VERDICT_SYMBOLS.items():
        for is_dead in (False, True):
            g = df[(labels == verdict) & (dead == is_dead)]
            if g.empty:
                continue
            dense = is_dense(g["density"])
            first_live = verdict == "unlabeled" and not is_dead
            fig.add_trace(
                go.Scatter(
                    x=g["map_x"],
                    y=g["map_y"],
                    mode="markers",
                    name=f"{verdict}{' (dead)' if is_dead else ''}",
                    customdata=g["feature"],
                    marker=dict(
                        symbol=symbol,
                        size=np.where(dense, 9, 5 if verdict == "unlabeled" else 8),
                        color="#bbbbbb" if is_dead else g["log10_density"],
                        colorscale="Viridis",
                        cmin=lo,
                        cmax=hi,
                        line=dict(width=np.where(dense, 1.5, 0), color="#b22"),
                        colorbar=dict(title="log10 density") if colorbar and first_live else None,
                    ),
                    hovertemplate="feature %{customdata}" + extra(verdict),
                )
            )


def map_tiles(df: pd.DataFrame, n: int = MAP_TILES) -> dict[str, np.ndarray]:
    """Every feature binned on an n x n grid over the map: per tile (rows: y) the number of
    features, of live ones, and the live ones' median log10 density (NaN: none live), with the
    tiles' centres."""
    df = df[np.isfinite(df["map_x"]) & np.isfinite(df["map_y"])]
    x, y = df["map_x"].to_numpy(float), df["map_y"].to_numpy(float)
    xe, ye = np.linspace(x.min(), x.max(), n + 1), np.linspace(y.min(), y.max(), n + 1)
    ix = np.clip(np.searchsorted(xe, x, side="right") - 1, 0, n - 1)
    iy = np.clip(np.searchsorted(ye, y, side="right") - 1, 0, n - 1)
    tile = iy * n + ix
    count = np.bincount(tile, minlength=n * n)
    live = np.isfinite(df["log10_density"].to_numpy(float))
    median = np.full(n * n, np.nan)
    med = pd.Series(df["log10_density"].to_numpy(float)[live]).groupby(tile[live]).median()
    median[med.index.to_numpy()] = med.to_numpy()
    return {
        "x": (xe[:-1] + xe[1:]) / 2,
        "y": (ye[:-1] + ye[1:]) / 2,
        "count": count.reshape(n, n),
        "live": np.bincount(tile[live], minlength=n * n).reshape(n, n),
        "median": median.reshape(n, n),
    }


def feature_map(df: pd.DataFrame, method: str, overlay: pd.DataFrame | None = None) -> go.Figure:
    """Decoder directions in 2-D, coloured by log10 density (dead grey), shaped by verdict;
    dense features ringed. Up to SVG_POINTS features each is a point; past that every feature
    is counted into tiles coloured by their median log10 density, and only labeled and dense
    features are points (`overlay`: map_overlay(df) unless the page has it already). A page
    selects by the box or lasso drawn (selection.inside), so a selection over tiles takes every
    feature under it."""
    fig = go.Figure()
    finite = df.loc[np.isfinite(df["log10_density"]), "log10_density"]
    lo, hi = (float(finite.min()), 0.0) if len(finite) else (-6.0, 0.0)
    if len(df) <= SVG_POINTS:
        _map_points(fig, df, lo, hi, colorbar=True)
    else:
        t = map_tiles(df)
        only_dead = np.where((t["count"] > 0) & (t["live"] == 0), 1.0, np.nan)
        fig.add_trace(
            go.Heatmap(
                x=t["x"], y=t["y"], z=only_dead, text=t["count"], colorscale=[[0, "#dddddd"], [1, "#dddddd"]],
                showscale=False, name="dead features only",
                hovertemplate="%{text:,} dead feature(s)" + extra("tile"),
            )
        )  # fmt: skip
        fig.add_trace(
            go.Heatmap(
                x=t["x"], y=t["y"], z=t["median"], text=t["count"], colorscale="Viridis", zmin=lo, zmax=hi,
                colorbar=dict(title="log10 density, tile median"), name="features",
                hovertemplate="%{text:,} feature(s), median log10 density %{z:.2f}" + extra("tile"),
            )
        )  # fmt: skip
        _map_points(fig, map_overlay(df) if overlay is None else overlay, lo, hi, colorbar=False)
    fig.update_layout(
        height=560,
        margin=dict(t=10, l=10, r=10, b=10),
        legend=dict(orientation="h", y=-0.08),
        xaxis=dict(title=f"{method} 1", showticklabels=False),
        yaxis=dict(title=f"{method} 2", showticklabels=False),
        dragmode="lasso",
    )
    return fig


def tail_cosines(df: pd.DataFrame, cut: float) -> go.Figure:
    """Encoder cosine to the low-density tail's mean direction: the tail's features against the
    other live ones, each group as shares of itself (a tail of 15 among 1,500 features would be
    slivers on a common count axis), and every tail feature also as a tick below the axis."""
    live = df[df["density"] > 0]
    tail = live["density"] < cut
    fig = go.Figure()
    groups = (("low-density tail", live[tail], "#e76f51"), ("other live features", live[~tail], "#888"))
    edges = np.linspace(-1.0, 1.0, 41)  # 0.05 wide; binned here, so 40 bars travel, not a value per feature
    for name, g, colour in groups:
        counts, _ = np.histogram(g["tail_cos"].dropna().clip(-1.0, 1.0), bins=edges)
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=100.0 * counts / max(len(g), 1),
                width=0.05,
                name=f"{name} ({len(g):,})",
                marker_color=colour,
                marker_line_width=0,
                opacity=0.7,
                hovertemplate=f"cosine %{{x:.3f}}: %{{y:.1f}}% of the {name}{extra()}",
            )
        )
    if 0 < int(tail.sum()) <= TAIL_TICKS:
        fig.add_trace(
            go.Scatter(
                x=live.loc[tail, "tail_cos"],
                y=np.zeros(int(tail.sum())),
                mode="markers",
                marker=dict(symbol="line-ns-open", size=14, color="#e76f51", line_width=2),
                name="each tail feature",
                customdata=live.loc[tail, "feature"],
                hovertemplate=f"feature %{{customdata}}: cosine %{{x:.3f}}{extra()}",
            )
        )
    fig.add_vline(x=TAIL_COSINE, line_dash="dash", line_color="#333", line_width=1)
    fig.update_layout(barmode="overlay", height=300, margin=dict(t=10, l=10, r=10, b=10))
    fig.update_xaxes(title_text="encoder cosine to the tail's mean direction", range=[-1, 1])
    fig.update_yaxes(title_text="% of the group's features", rangemode="tozero")
    return fig


TAIL_TICKS = 500
"""up to this many tail features are also drawn one tick each"""


def context_label(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


@shared
def context_heatmap(ctx: pd.DataFrame, unit: str) -> go.Figure:
    """The loss increase from each SAE alone (rows, shallow at the top) by context (columns), one
    panel per family; each SAE's training context is outlined in its row."""
    fams = sorted(ctx["architecture"].unique())
    fig = make_subplots(rows=1, cols=len(fams), subplot_titles=fams, horizontal_spacing=0.16)
    lo, hi = float(ctx["increase"].min()), float(ctx["increase"].max())
    for c, fam in enumerate(fams, start=1):
        g = ctx[ctx["architecture"] == fam]
        rows = g.drop_duplicates("sae").sort_values(["depth", "sae"])
        spans = g.drop_duplicates(["ctx_lo", "ctx_hi"]).sort_values("ctx_lo")
        xl = [context_label(a, b) for a, b in zip(spans["ctx_lo"], spans["ctx_hi"])]
        yl = [short_hook(h) for h in rows["hook"]]
        z = g.pivot_table(index="sae", columns="ctx_lo", values="increase").loc[rows["sae"], spans["ctx_lo"]]
        fig.add_trace(
            go.Heatmap(
                z=z.to_numpy(),
                x=xl,
                y=yl,
                coloraxis="coloraxis",
                xgap=2,
                ygap=2,
                text=np.vectorize(lambda v: f"{v:+.3f}")(z.to_numpy()),
                texttemplate="%{text}",
                customdata=np.array(rows["sae"])[:, None].repeat(len(xl), 1),
                hovertemplate="%{customdata} (%{y})" + BR + "context %{x} tokens: %{z:+.4f}" + extra(),
            ),
            row=1,
            col=c,
        )
        axis = "" if c == 1 else str(c)
        for i, r in enumerate(rows.itertuples()):
            if pd.isna(r.train_context):
                continue
            inside = [j for j, (a, b) in enumerate(zip(spans["ctx_lo"], spans["ctx_hi"])) if a <= r.train_context <= b]
            # training context past every measured column: mark the last one
            j = inside[0] if inside else (len(xl) - 1 if r.train_context > spans["ctx_hi"].max() else 0)
            fig.add_shape(
                type="rect",
                x0=j - 0.5,
                x1=j + 0.5,
                y0=i - 0.5,
                y1=i + 0.5,
                line=dict(color="#000", width=2),
                xref=f"x{axis}",
                yref=f"y{axis}",
            )
        fig.update_yaxes(autorange="reversed", row=1, col=c, showticklabels=True)
    fig.update_xaxes(title_text="context (tokens)", type="category")
    fig.update_yaxes(type="category")
    fig.update_layout(
        coloraxis=dict(**_harm_scale(lo, hi), colorbar_title=unit),
        height=140 + 40 * max(ctx.groupby("architecture")["sae"].nunique().max(), 1),
        margin=dict(t=40, l=10, r=10, b=10),
    )
    return fig


@shared
def loss_bars(df: pd.DataFrame, unit: str) -> go.Figure:
    """Per SAE: the loss increase with its reconstruction next to that with random errors of the
    same norm per token; one panel per family."""
    fams = sorted(df["architecture"].unique())
    fig = make_subplots(rows=1, cols=len(fams), subplot_titles=fams, shared_yaxes=True)
    for c, fam in enumerate(fams, start=1):
        g = df[df["architecture"] == fam].sort_values("depth")
        x = [short_hook(h) for h in g["hook"]]
        for col, name, colour in (
            ("increase", "SAE error", "#d62728"),
            ("random_increase", "random, same norm", "#7f7f7f"),
        ):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=g[col],
                    name=name,
                    marker_color=colour,
                    showlegend=c == 1,
                    legendgroup=name,
                    hovertemplate="%{x}: %{y:+.4f}" + extra(name),
                ),
                row=1,
                col=c,
            )
    fig.update_yaxes(title_text=f"loss increase ({unit})", col=1)
    fig.update_layout(barmode="group", height=340, margin=dict(t=40, l=10, r=10, b=10))
    return fig


def steering_spread(t: pd.DataFrame, unit: str) -> go.Figure:
    """One SAE: the estimated loss change of every live feature at +1 and -1 (violins), with the
    exact changes where measured (points)."""
    live = t[t["estimate"].notna()]
    fig = go.Figure()
    for sign, est, col in (
        ("+1 × max", live["estimate"], "exact_plus"),
        ("−1 × max", -live["estimate"], "exact_minus"),
    ):
        fig.add_trace(
            go.Violin(
                x=[sign] * len(est),
                y=est,
                name="estimate, every live feature",
                side="negative",
                line_color="#1f77b4",
                points=False,
                showlegend=sign == "+1 × max",
                legendgroup="est",
            )
        )
        ex = t[t[col].notna()]
        fig.add_trace(
            go.Scatter(
                x=[sign] * len(ex),
                y=ex[col],
                mode="markers",
                name="exact, measured features",
                legendgroup="exact",
                showlegend=sign == "+1 × max",
                marker=dict(color="#d62728", size=6, opacity=0.7),
                customdata=ex["feature"],
                hovertemplate="feature %{customdata}: %{y:+.4f}" + extra(),
            )
        )
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(
        yaxis_title="loss change (below 0 helps)",
        xaxis_title="strength",
        xaxis_type="category",
        height=380,
        margin=dict(t=20, l=10, r=10, b=10),
        violinmode="overlay",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def steering_density(t: pd.DataFrame, unit: str) -> go.Figure:
    """One SAE: the loss change against log10 density: estimate at +1 for every live feature,
    exact changes (the better of +1 and -1) where measured."""
    live = t[t["estimate"].notna() & (t["density"] > 0)]
    ex = live[live["exact_plus"].notna()]
    best = np.minimum(ex["exact_plus"], ex["exact_minus"])
    fig = go.Figure()
    fig.add_trace(
        scatter_type(len(live))(
            x=np.log10(live["density"]),
            y=live["estimate"],
            mode="markers",
            name="estimate at +1",
            marker=dict(size=4, color="#1f77b4", opacity=0.4),
            customdata=live["feature"],
            hovertemplate="feature %{customdata}" + BR + "log10 density %{x:.2f}: %{y:+.4f}" + extra(),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=np.log10(ex["density"]),
            y=best,
            mode="markers",
            name="exact, better sign",
            marker=dict(size=7, color="#d62728"),
            customdata=ex["feature"],
            hovertemplate="feature %{customdata}" + BR + "log10 density %{x:.2f}: %{y:+.4f}" + extra(),
        )
    )
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(
        xaxis_title="log10 density",
        yaxis_title=f"loss change ({unit})",
        height=380,
        margin=dict(t=20, l=10, r=10, b=10),
    )
    return fig
