"""How a feature's stored examples are grouped for reading: duplicates out, sampled examples cut
into equal-count quantiles or equal-width activation intervals, with the share of all the
feature's activations each group stands for."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.density import activation_bin_edges


def dedupe_windows(ex: pd.DataFrame) -> pd.DataFrame:
    """One row per shown window: the same sequence and position range appear once (the row
    with the highest value is kept, in the frame's order otherwise)."""
    if ex.empty:
        return ex
    key = ex.assign(_n=[len(a) for a in ex["acts"]])
    order = key.sort_values("value", ascending=False, kind="stable")
    kept = set(order.index[~order.duplicated(["seq", "ctx_start", "_n"]).to_numpy()])
    return ex[ex.index.isin(kept)]


def distinct_contexts(ex: pd.DataFrame) -> pd.DataFrame:
    """Top examples with one row per context: an example whose window overlaps a higher one's in
    the same sequence is folded into it, its position listed in `also` (sorted). Rows keep the
    frame's order (best first); the exact token-level top-k is the frame itself."""
    if ex.empty:
        return ex.assign(also=[[] for _ in range(len(ex))])
    kept: list = []
    spans: dict[int, list[tuple[int, int, object]]] = {}
    also: dict[object, list[int]] = {}
    for idx, r in ex.sort_values("value", ascending=False, kind="stable").iterrows():
        lo, hi = int(r["ctx_start"]), int(r["ctx_start"]) + len(r["acts"])
        home = next((k for a, b, k in spans.get(int(r["seq"]), []) if a < hi and lo < b), None)
        if home is None:
            kept.append(idx)
            spans.setdefault(int(r["seq"]), []).append((lo, hi, idx))
            also[idx] = []
        else:
            also[home].append(int(r["pos"]))
    out = ex.loc[[i for i in ex.index if i in also]]
    return out.assign(also=[sorted(also[i]) for i in out.index])


def activation_share(hist: np.ndarray, log_lo: float, log_hi: float, lo: float, hi: float) -> float:
    """Share of a feature's nonzero activations with value in [lo, hi), from its stored log-binned
    histogram (underflow bin first, overflow last). Within a bin, activations are taken as spread
    evenly in log10, so an interval that cuts a bin gets its share of that bin."""
    hist = np.asarray(hist, dtype=float)
    total = hist.sum()
    if total == 0 or hi <= lo:
        return 0.0
    edges = activation_bin_edges(log_lo, log_hi, len(hist) - 2)
    a = np.log10(lo) if lo > 0 else -np.inf
    b = np.log10(hi)
    overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0, None) / np.diff(edges)
    inside = float((hist[1:-1] * overlap).sum())
    if a <= edges[0]:
        inside += hist[0]  # the underflow bin lies below the first edge
    if b > edges[-1]:
        inside += hist[-1]
    return inside / total


def equal_width_groups(q: pd.DataFrame, max_act: float, n: int) -> list[tuple[float, float, pd.DataFrame]]:
    """Sampled examples cut into n equal-width activation intervals over (0, max_act], highest
    first (SAEDashboard's choice); an interval may hold no sampled example."""
    edges = np.linspace(0.0, float(max_act), n + 1)
    edges[-1] = np.nextafter(edges[-1], np.inf)  # the max itself belongs to the top interval
    out = []
    for i in reversed(range(n)):
        lo, hi = edges[i], edges[i + 1]
        out.append((lo, min(hi, float(max_act)), q[(q["value"] >= lo) & (q["value"] < hi)]))
    return out
