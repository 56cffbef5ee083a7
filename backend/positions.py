"""Where in the sequence a feature fires: its position profile, how positional it is, its bands.

A linear correlation with position misses features that fire in narrow position bands (a dense
feature at positions 41-45 and 186-203 correlates at |r| < 0.2), so the precompute keeps each
feature's firings per position bucket (stats.FeatureStats.position_profile) and measures how far
their distribution is from the corpus's own distribution of tokens over positions.
"""

from __future__ import annotations

import numpy as np

POSITIONAL_BITS = 1.0
"""a feature is positional above this many bits: its firings are as concentrated as a feature
firing evenly on half of the positions and never on the rest"""

BAND_RATIO = 2.0
"""a position bucket is in a band where the feature fires at least this many times its overall rate"""


def position_kl(fire: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """KL divergence, in bits, of each feature's firings over position buckets [F, n] from the
    counted tokens' distribution over them [n]: 0 for a feature that fires as often at every
    position, log2(n) at most for one that fires in one bucket only; NaN for a dead feature."""
    fire = np.asarray(fire, dtype=np.float64)
    q = np.asarray(tokens, dtype=np.float64)
    q = q / max(q.sum(), 1.0)
    count = fire.sum(1, keepdims=True)
    p = fire / np.maximum(count, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / np.where(q > 0, q, 1.0)), 0.0)
    return np.where(count[:, 0] > 0, terms.sum(1), np.nan)


def bucket_ranges(width: int, seq_len: int, n: int) -> list[tuple[int, int]]:
    """First and last position of each bucket."""
    return [(b * width, min((b + 1) * width, seq_len) - 1) for b in range(n)]


def bands(fire: np.ndarray, tokens: np.ndarray, width: int, seq_len: int) -> list[tuple[int, int]]:
    """Runs of adjacent buckets where one feature fires at >= BAND_RATIO times its overall rate,
    as (first, last) positions, the run with the most firings first."""
    fire = np.asarray(fire, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    total = fire.sum()
    if total == 0:
        return []
    rate = np.divide(fire, tokens, out=np.zeros_like(fire), where=tokens > 0)
    hot = rate >= BAND_RATIO * total / max(tokens.sum(), 1.0)
    ranges = bucket_ranges(width, seq_len, len(fire))
    runs: list[tuple[float, int, int]] = []
    b = 0
    while b < len(hot):
        if not hot[b]:
            b += 1
            continue
        start = b
        while b < len(hot) and hot[b]:
            b += 1
        runs.append((fire[start:b].sum(), ranges[start][0], ranges[b - 1][1]))
    return [(lo, hi) for _, lo, hi in sorted(runs, key=lambda r: -r[0])]


def describe_bands(found: list[tuple[int, int]], most: int = 3) -> str:
    return ", ".join(f"{lo}–{hi}" for lo, hi in found[:most]) + (" …" if len(found) > most else "")


def explain(width: int, n_buckets: int) -> str:
    """What the bits and the bands mean, in the words every page that shows them uses."""
    return (
        f"Bits: KL divergence of a feature's firings over ranges of {width} position(s) from the counted tokens' "
        f"spread over them (0: fires alike at every position; {np.log2(max(n_buckets, 1)):.0f} at most); "
        f"positional from {POSITIONAL_BITS:g}, as concentrated as firing evenly on half the positions. Bands: ranges "
        f"where it fires at {BAND_RATIO:g}× its overall rate or more, the band with the most firings first."
    )
