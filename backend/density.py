"""Density rules, in one place: what counts as dense or ultralow, the density buckets, log10 with
dead features, and the bin edges every histogram uses.

A feature's density is the fraction of counted tokens on which it is nonzero; a dead feature
(count 0) has density 0 and no log10 (NaN), and is counted apart wherever a log axis is drawn.
"""

from __future__ import annotations

import math

import numpy as np

DENSE = 0.1
"""a feature active on more than this fraction of tokens is dense (strictly greater)"""
ULTRALOW = 1e-5
"""a live feature active on fewer than this fraction of tokens is ultralow (strictly less)"""
TOO_FEW_FIRINGS = 8
"""a feature that fired fewer times than this is "too few firings to judge": the blind queue
leaves it out (its short list of examples would give its density away, and a handful of
examples is no basis for a verdict), and the Layer table says so"""
LOG_BIN_WIDTH = 0.1
"""width in decades of the bins of every log10-density histogram"""

DENSITY_BUCKETS = [
    (-math.inf, math.log10(ULTRALOW), "ultralow (<1e-5)"),
    (-5.0, -4.0, "1e-5..1e-4"),
    (-4.0, -3.0, "1e-4..1e-3"),
    (-3.0, -2.0, "1e-3..1e-2"),
    (-2.0, math.log10(DENSE), "1e-2..1e-1"),
    (math.log10(DENSE), math.inf, "dense (>1e-1)"),
]
"""(lo, hi, name) over log10 density, lo inclusive: the buckets of the label queue, the
interpretability statistics and the overview. A density of exactly 0.1 is in the last bucket's
lower edge but not dense by `is_dense`; buckets are for sampling, `is_dense` is the rule."""

DEAD = "dead"


def density(count, n_tokens):
    """The fraction of counted tokens a feature fires on: the one formula every table and page
    uses (0 for every feature when no token was counted). Floats, numpy arrays, pandas Series
    and torch tensors alike."""
    return count / max(int(n_tokens), 1)


def is_dense(density):
    """Works on floats, numpy arrays, pandas Series and torch tensors alike."""
    return density > DENSE


def is_ultralow(density, count):
    return (count > 0) & (density < ULTRALOW)


def log10_density(density):
    """log10 of density, NaN for dead features (density 0): they have no place on a log axis."""
    d = np.asarray(density, dtype=float)
    with np.errstate(divide="ignore"):
        out = np.where(d > 0, np.log10(np.where(d > 0, d, 1.0)), np.nan)
    return float(out) if out.ndim == 0 else out


def density_bucket(log10: float | None) -> str:
    if log10 is None or not np.isfinite(log10):
        return DEAD
    for lo, hi, name in DENSITY_BUCKETS:
        if lo <= log10 < hi:
            return name
    return DENSITY_BUCKETS[-1][2]


def density_buckets(log10) -> np.ndarray:
    """density_bucket of each value of an array, at numpy speed (a queue over a million features)."""
    x = np.asarray(log10, dtype=float)
    names = np.array([b[2] for b in DENSITY_BUCKETS] + [DEAD], dtype=object)
    i = np.searchsorted(np.array([b[0] for b in DENSITY_BUCKETS[1:]]), x, side="right")
    return names[np.where(np.isfinite(x), i, len(DENSITY_BUCKETS))]


def bucket_order() -> list[str]:
    """Buckets from no density to dense: the order charts and queues use."""
    return [DEAD] + [b[2] for b in DENSITY_BUCKETS]


def log_density_edges(log10_values: np.ndarray, width: float = LOG_BIN_WIDTH) -> np.ndarray:
    """Bin edges over log10 density from below the smallest live value up to 0 (density 1),
    aligned to multiples of `width`, so histograms of different SAEs share bins."""
    finite = np.asarray(log10_values, dtype=float)
    finite = finite[np.isfinite(finite)]
    n_lo = min(math.floor((finite.min() if finite.size else -1.0) / width), -1)
    return np.arange(n_lo, 1) * width  # integer steps: the last edge is exactly 0 (density 1)


def log_density_histogram(density: np.ndarray, width: float = LOG_BIN_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of log10 density over live features; dead ones are left out."""
    logs = log10_density(np.asarray(density, dtype=float))
    logs = np.atleast_1d(logs)[np.isfinite(np.atleast_1d(logs))]
    edges = log_density_edges(logs, width)
    counts, _ = np.histogram(logs, bins=edges)
    return counts, edges


def activation_bin_edges(log_lo: float, log_hi: float, bins: int) -> np.ndarray:
    """log10 edges of the inner bins of a feature's activation histogram; the stored histogram
    adds an underflow bin before them and an overflow bin after."""
    return np.linspace(log_lo, log_hi, bins + 1)


def activation_bin_width(log_lo: float, log_hi: float, bins: int) -> float:
    return (log_hi - log_lo) / bins


def resolution_floor(n_tokens: int) -> float:
    """log10 of the smallest nonzero density a run of `n_tokens` can measure (one firing)."""
    return -math.log10(max(int(n_tokens), 1))


def below_floor(threshold: float, n_tokens: int) -> bool:
    """Whether densities under `threshold` cannot be told apart from zero at this token count:
    then an empty ultralow bucket says nothing about the SAE."""
    return threshold <= 1.0 / max(int(n_tokens), 1)


def format_density(d: float) -> str:
    """One format for densities on screen: a percentage where that reads well, else scientific."""
    if d <= 0:
        return "0 (dead)"
    if d >= 1e-3:
        return f"{d:.2%}" if d < 0.1 else f"{d:.1%}"
    return f"{d:.2e} ({d:.4%})" if d >= 1e-5 else f"{d:.2e}"


FIRING_THRESHOLDS = {"any": 0.0, "1pct": 0.01, "10pct": 0.1}
"""What counts as firing, relative to the feature's max activation. ReLU SAEs fire with tiny
activations (down to 1e-4 of the max) that inflate their density; these thresholds are applied
at precompute time to the stored activation histogram (features.count_ge_1pct, count_ge_10pct)."""


def counts_at_least(hist: np.ndarray, max_act: np.ndarray, rel: float, log_lo: float, log_hi: float) -> np.ndarray:
    """Per feature, its activations of at least rel x its max, read off its log-binned histogram
    [F, bins + 2] (underflow first, overflow last): the bin holding the threshold counts whole,
    so the cut is exact to within one bin (a factor 10**bin_width)."""
    hist = np.asarray(hist)
    bins = hist.shape[1] - 2
    width = activation_bin_width(log_lo, log_hi, bins)
    with np.errstate(divide="ignore"):
        v = np.log10(np.maximum(np.asarray(max_act, dtype=float) * rel, 1e-300))
    first = np.clip(np.floor((v - log_lo) / width).astype(np.int64) + 1, 0, bins + 1)
    tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tail[:, b] = sum of bins b..end
    return tail[np.arange(hist.shape[0]), first]
