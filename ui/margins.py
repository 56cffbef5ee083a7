"""A figure's margins set, before it is drawn, to what its tick labels, axis titles, legend and
colour bar need.

Streamlit's chart theme turns Plotly's automargin on, and the figures here ask for thin margins
(10 px): in the browser each was drawn, measured, and drawn again with the margins automargin
found. Starting from margins that already fit, the second drawing does not happen: full page
loads of the demo's Overview p50 2.12 → 1.81 s, of its Clusters page 2.11 → 1.81 s (12 each,
interleaved with the old code). Automargin stays on, so a label longer than estimated still gets
its room (at the old cost), never clipped.

The estimates are deliberately a little generous (a few px of extra white space at most).
"""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go

CHAR = 7.0
"""px per character of the charts' 12 px font (Streamlit's Source Sans), rounded up: digits are
about 6.6 px wide, most lower-case letters less, capitals and m, w more (WIDE)"""
WIDE = 8.5
PAD = 8  # Streamlit's margin.pad
SLACK = 8
TITLE = 14  # axis title font size in Streamlit's chart theme
STANDOFF = {"x": 20, "y": 24}  # its axis title standoffs
ITEM = 40  # a legend item's symbol and gap
ROW = 19  # a legend row's height
TYPICAL_WIDTH = 940
"""a figure's width in the main column (1,400 px window); a narrower one wraps a horizontal legend
into more rows, or turns category labels further, than estimated, and automargin makes the room"""
_TAG = re.compile(r"<[^>]+>")


def text_px(text, size: float = 12) -> float:
    """The width of the widest line of a label (`<br>` breaks lines, other tags are not shown)."""
    lines = _TAG.sub("", re.sub(r"<br\s*/?>", "\n", str(text))).split("\n")
    return max(sum(WIDE if c.isupper() or c in "mwMW@%" else CHAR for c in line) for line in lines) * size / 12


def numeric_chars(lo: float, hi: float) -> int:
    """Characters of the widest tick label Plotly picks for a linear axis over [lo, hi]."""
    neg = 1 if lo < 0 else 0
    top = max(abs(lo), abs(hi))
    if top >= 1000:
        return 4 + neg  # "12k", "1.5M"
    step = (hi - lo) / 5 if hi > lo else max(top, 1.0)
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    whole = len(str(int(top))) if top >= 1 else 1
    return whole + (decimals + 1 if decimals else 0) + neg


def tick_px(axis: dict, values: list, size: float) -> float:
    """The widest tick label of an axis, from its tick text, its category names or its range."""
    if axis.get("showticklabels") is False:
        return 0.0
    if axis.get("ticktext") is not None and len(axis["ticktext"]):
        return max(text_px(t, size) for t in axis["ticktext"])
    strings = [v for v in values if isinstance(v, str)]
    if strings:
        return max(text_px(v, size) for v in strings)
    if axis.get("range") is not None:
        nums = np.asarray(axis["range"], dtype=float)
    else:  # `_values` keeps finite numbers only
        nums = np.asarray([v for v in values if isinstance(v, int | float)], dtype=float)
    if not nums.size or axis.get("type") == "log":
        return 5 * CHAR * size / 12
    chars = numeric_chars(float(nums.min()), float(nums.max())) + ("%" in str(axis.get("tickformat", "")))
    return chars * CHAR * size / 12


def _values(traces: list[dict], letter: str, ref: str) -> list:
    """What the traces on one axis place along it: its distinct names, and for numbers only their
    extremes (all a tick label's width depends on)."""
    names: set = set()
    nums: list[float] = []
    for t in traces:
        if t.get(f"{letter}axis", letter) != ref or t.get(letter) is None or isinstance(t.get(letter), dict):
            continue  # (a dict: a typed array as Plotly serialises one, numbers)
        flat = np.asarray(t[letter]).ravel()
        if flat.dtype.kind in "biuf":
            finite = flat[np.isfinite(flat)]
            nums += [float(finite.min()), float(finite.max())] if finite.size else []
        else:
            names.update(v for v in flat.tolist() if isinstance(v, str))
            nums += [float(v) for v in flat.tolist() if isinstance(v, int | float) and math.isfinite(v)]
    return [*names, *nums]


def _auto_angle(ax: dict, values: list, widest: float) -> float:
    """The angle Plotly turns category labels to when they do not fit side by side: 30 degrees,
    or 90 when even that overlaps (judged at TYPICAL_WIDTH)."""
    names = [v for v in values if isinstance(v, str)] or list(ax.get("ticktext") or [])
    if not names:
        return 0.0
    d0, d1 = ax.get("domain") or [0, 1]
    slot = (TYPICAL_WIDTH - 150) * (d1 - d0) / len(names)
    if widest + 4 <= slot:
        return 0.0
    return 30.0 if 14 / math.sin(math.radians(30)) <= slot else 90.0


def _title_px(axis: dict, letter: str) -> float:
    text = (axis.get("title") or {}).get("text")
    if not text:
        return 0.0
    lines = len(re.split(r"<br\s*/?>", str(text)))
    return STANDOFF[letter] + TITLE * 1.25 * lines


def needs(layout: dict, traces: list[dict]) -> dict[str, float]:
    """The margin (px) each side needs for what Plotly would push into it."""
    axes = {k: v or {} for k, v in layout.items() if re.fullmatch(r"[xy]axis\d*", k)}
    axes.setdefault("xaxis", {})
    axes.setdefault("yaxis", {})

    def ref(key: str) -> str:  # "xaxis2" -> "x2"
        return key[0] + key[5:]

    def start(ax: dict) -> float:
        return (ax.get("domain") or [0, 1])[0]

    left = min(start(a) for k, a in axes.items() if k[0] == "x")
    right = max((a.get("domain") or [0, 1])[1] for k, a in axes.items() if k[0] == "x")
    bottom = min(start(a) for k, a in axes.items() if k[0] == "y")
    need = {"l": 0.0, "r": 0.0, "t": 0.0, "b": 0.0}
    for key, ax in axes.items():
        letter = key[0]
        anchor = ax.get("anchor", "y" if letter == "x" else "x")
        anchor_ax = axes.get(("xaxis" if letter == "y" else "yaxis") + anchor[1:], {})
        size = (ax.get("tickfont") or {}).get("size", 12)
        values = _values(traces, letter, ref(key))
        ticks = tick_px(ax, values, size)
        if letter == "y" and ax.get("side", "left") == "left" and start(anchor_ax) <= left + 1e-9:
            need["l"] = max(need["l"], PAD + ticks + _title_px(ax, "y") + SLACK)
        elif letter == "x" and ax.get("side", "bottom") == "bottom" and start(anchor_ax) <= bottom + 1e-9:
            angle = math.radians(float(ax.get("tickangle") or _auto_angle(ax, values, ticks)))
            line = size * 1.3 + 6  # a row of tick labels, with the space Plotly leaves above it
            high = ticks * abs(math.sin(angle)) + line * abs(math.cos(angle)) if ticks else 0.0
            need["b"] = max(need["b"], PAD + high + _title_px(ax, "x") + SLACK)
            if ticks and (ax.get("domain") or [0, 1])[1] >= right - 1e-9:
                # the last tick label is centred on the plot's edge: a name sticks out by half its width
                named = any(isinstance(v, str) for v in values)
                need["r"] = max(need["r"], ticks * abs(math.cos(angle)) / 2 + 14 if named else 16)
    legend = layout.get("legend") or {}
    shown = [t for t in traces if t.get("showlegend") is not False and t.get("name")]
    title = text_px((legend.get("title") or {}).get("text") or "")
    if shown and layout.get("showlegend") is not False and (layout.get("showlegend") or len(shown) > 1):
        items = [ITEM + text_px(t["name"]) for t in _unique_names(shown)]
        if legend.get("orientation", "v") == "v":
            need["r"] = max(need["r"], ITEM + max([*items, title]) + SLACK)
        else:  # rows of items across the plot, above it (y >= 1) or below it (y < 0)
            rows = math.ceil((sum(items) + title) / max(TYPICAL_WIDTH - need["l"] - need["r"], 200))
            high = rows * ROW + 2 * PAD
            y = float(legend.get("y", 1.02 if legend.get("orientation") == "h" else 1))
            plot = float(layout.get("height") or 450) - 80
            if y >= 1:
                need["t"] = max(need["t"], (y - 1) * plot + high + SLACK)
            elif y < 0:
                need["b"] = max(need["b"], -y * plot + high + SLACK)
    for cbar, thick, xpad in _colour_bars(layout, traces):
        title = text_px((cbar.get("title") or {}).get("text") or "")
        need["r"] = max(need["r"], xpad + cbar.get("thickness", thick) + max(title, 4 * CHAR) + 10 + SLACK)
    return need


def _unique_names(traces: list[dict]) -> list[dict]:
    seen, out = set(), []
    for t in traces:
        key = t.get("legendgroup") or t["name"]
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _colour_bars(layout: dict, traces: list[dict]):
    """Each colour bar drawn: (its settings, default thickness, default x padding); a layout colour
    axis takes Streamlit's theme (16 px thick, 32 px off the plot), a trace's Plotly's (30, 10)."""
    used = {t.get("coloraxis") or (t.get("marker") or {}).get("coloraxis") for t in traces} - {None}
    for name in used:
        ca = layout.get(name) or {}
        if ca.get("showscale", True):
            yield ca.get("colorbar") or {}, 16, 32
    for t in traces:
        if t.get("coloraxis"):
            continue
        if t.get("type") in ("heatmap", "histogram2d", "contour") and t.get("showscale", True):
            yield t.get("colorbar") or {}, 30, 10
        marker = t.get("marker") or {}
        if (marker.get("showscale") or marker.get("colorbar")) and not marker.get("coloraxis"):
            yield marker.get("colorbar") or {}, 30, 10


def fit(fig: go.Figure, traces: list[dict]) -> None:
    """Raise the figure's margins (only those it sets, and l and r, which Streamlit's theme sets
    to 0) to what `needs` says; never lower one."""
    layout = fig.layout.to_plotly_json()
    margin = layout.get("margin") or {}
    need = needs(layout, traces)
    new = {}
    for side, px in need.items():
        have = margin.get(side, 0 if side in "lr" else None)
        if have is not None and px > have:
            new[side] = math.ceil(px)
    if new:
        fig.update_layout(margin=new)
