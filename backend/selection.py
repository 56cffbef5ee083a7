"""Which points of a 2-D map lie inside the boxes and lassos a reader drew on it. A wide SAE's
feature map draws tiles, not every feature, so what a selection holds is decided here, over every
feature, rather than from the points the browser happened to draw."""

from __future__ import annotations

import numpy as np


def inside(x, y, selection: dict) -> np.ndarray:
    """A mask over the points (x, y): inside any box (`selection["box"]`, each with `x` and `y`
    holding two corners) or any lasso (`selection["lasso"]`, each with `x` and `y` holding the
    polygon's vertices), as Streamlit reports a Plotly chart's selection."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    mask = np.zeros(len(x), dtype=bool)
    for box in selection.get("box") or []:
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        mask |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    for lasso in selection.get("lasso") or []:
        mask |= in_polygon(x, y, np.asarray(lasso["x"], dtype=float), np.asarray(lasso["y"], dtype=float))
    return mask


def in_polygon(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd rule: a point is inside where a ray from it to the right crosses the polygon's
    edges an odd number of times (the polygon closes itself)."""
    mask = np.zeros(len(x), dtype=bool)
    if len(px) < 3:
        return mask
    near = np.flatnonzero((x >= px.min()) & (x <= px.max()) & (y >= py.min()) & (y <= py.max()))
    x, y, odd = x[near], y[near], np.zeros(len(near), dtype=bool)  # a lasso has hundreds of edges
    for (ax, ay), (bx, by) in zip(zip(px, py), zip(np.roll(px, -1), np.roll(py, -1))):
        if ay == by:
            continue  # a horizontal edge is never crossed by a horizontal ray
        spans = (ay > y) != (by > y)
        cross = ax + (y - ay) * (bx - ax) / (by - ay)
        odd ^= spans & (x < cross)
    mask[near[odd]] = True
    return mask
