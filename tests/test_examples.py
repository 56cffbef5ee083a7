"""Example grouping and deduplication (backend.examples)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.unit


def test_examples_dedupe_and_groups():
    from backend.examples import activation_share, dedupe_windows, equal_width_groups

    ex = pd.DataFrame(
        {
            "seq": [1, 1, 1, 2],
            "ctx_start": [0, 0, 3, 0],
            "acts": [np.zeros(5), np.zeros(5), np.zeros(5), np.zeros(5)],
            "value": [2.0, 3.0, 1.0, 0.5],
            "pos": [2, 4, 5, 1],
        }
    )
    out = dedupe_windows(ex)
    assert list(out["value"]) == [3.0, 1.0, 0.5]  # the duplicate window kept once, its best row
    q = pd.DataFrame({"value": [0.1, 0.5, 0.9, 1.0]})
    groups = equal_width_groups(q, 1.0, 2)
    assert [(round(lo, 2), round(hi, 2), len(g)) for lo, hi, g in groups] == [(0.5, 1.0, 3), (0.0, 0.5, 1)]
    hist = np.zeros(66)
    hist[1 + 32] = 3  # bin [1, 1.33) (log10 0 .. 0.125)
    hist[1 + 24] = 1  # bin [0.1, 0.13)
    assert activation_share(hist, -4, 4, 0.5, 2.0) == pytest.approx(0.75)
    assert activation_share(hist, -4, 4, 0.0, 0.5) == pytest.approx(0.25)
    # an interval cutting a bin gets the part of it that it covers, in log10
    assert activation_share(hist, -4, 4, 1.0, 10**0.0625) == pytest.approx(0.75 / 2)


def test_overlapping_top_windows_fold_into_one_context():
    import pandas as pd

    from backend.examples import distinct_contexts

    ex = pd.DataFrame(
        {
            "seq": [59, 59, 59, 7, 59],
            "pos": [40, 42, 46, 10, 90],
            "ctx_start": [32, 34, 38, 2, 82],
            "value": [9.0, 8.0, 7.0, 6.0, 5.0],
            "acts": [[0.0] * 12] * 5,
        }
    )
    got = distinct_contexts(ex)
    assert list(got["pos"]) == [40, 10, 90]  # best first, one per context
    assert list(got["also"]) == [[42, 46], [], []]
    assert distinct_contexts(ex.iloc[:0]).empty
