"""Agreement statistics and the interpretability table: hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend import labels

pytestmark = pytest.mark.unit


def test_agreement_and_intervals():
    import pandas as pd

    cur = pd.DataFrame(
        {
            "db": "d",
            "sae": "s",
            "feature": [1, 1, 2, 2, 3, 3, 4],
            "labeler": ["a", "b", "a", "b", "a", "b", "a"],
            "verdict": [
                "interpretable",
                "interpretable",
                "not interpretable",
                "interpretable",
                "not interpretable",
                "not interpretable",
                "interpretable",
            ],
        }
    )
    ag = labels.agreement(cur)
    assert ag["n_features"] == 3
    assert ag["percent_agreement"] == pytest.approx(2 / 3)
    # Cohen: po = 2/3; a says yes 1/3, b says yes 2/3 -> pe = 1/3*2/3 + 2/3*1/3 = 4/9
    assert ag["cohen_kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert list(labels.disagreements(cur)["feature"]) == [2]
    assert list(labels.disagreements(cur)["verdicts"]) == ["a: not interpretable; b: interpretable"]
    lo, hi = labels.wilson(0, 10)
    assert lo == 0 and 0.2 < hi < 0.35
    lo, hi = labels.wilson(5, 10)
    assert lo < 0.5 < hi
    by = labels.interpretability_by_bucket(
        cur.assign(log10_density=[-1.5] * 4 + [-6.0] * 3), lambda x: "low" if x < -5 else "high"
    )
    # features count once, by majority: high = feature 1 (yes, yes) and feature 2 (a tie, left
    # out); low = feature 3 (no, no) and feature 4 (yes)
    got = {r.bucket: (r.k, r.n) for r in by.itertuples()}
    assert got == {"high": (1, 1), "low": (1, 2)}


def test_fleiss_kappa_and_wilson_against_hand_computed_values():

    # Three items, three raters, categories (yes, no, unsure):
    #   item 1: 3 yes -> P_1 = (3*2)/(3*2) = 1
    #   item 2: 2 yes, 1 no -> P_2 = (2*1 + 0)/6 = 1/3
    #   item 3: 1 yes, 1 no, 1 unsure -> P_3 = 0
    # P-bar = 4/9; p_j = (6/9, 2/9, 1/9); P_e = (36 + 4 + 1)/81 = 41/81
    # kappa = (4/9 - 41/81) / (1 - 41/81) = (36/81 - 41/81) / (40/81) = -5/40 = -0.125
    from backend.labels.agreement import fleiss

    got = fleiss(np.array([[3, 0, 0], [2, 1, 0], [1, 1, 1]], dtype=float))
    assert got["percent_agreement"] == pytest.approx(4 / 9)
    assert got["fleiss_kappa"] == pytest.approx(-0.125)
    # Wilson 95% intervals, values as published (e.g. Newcombe 1998, table I): 81/263 -> 0.2553..0.3662
    lo, hi = labels.wilson(81, 263)
    assert (lo, hi) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    lo, hi = labels.wilson(15, 148)
    assert (lo, hi) == (pytest.approx(0.0624, abs=1e-4), pytest.approx(0.1605, abs=1e-4))
    assert labels.wilson(0, 20) == (0.0, pytest.approx(0.1611, abs=1e-4))


def test_interpretability_counts_features_sorted_by_density():
    cur = pd.DataFrame(
        {
            "db": "d",
            "sae": "s",
            "feature": [1, 1, 2, 3],
            "labeler": ["a", "b", "a", "a"],
            "verdict": ["interpretable", "interpretable", "not interpretable", "interpretable"],
            "log10_density": [-1.5, -1.5, -6.0, -3.5],
        }
    )
    by = labels.interpretability_by_bucket(cur)
    assert list(by["bucket"]) == ["ultralow (<1e-5)", "1e-4..1e-3", "1e-2..1e-1"]  # sparse to dense
    assert list(by["n"]) == [1, 1, 1]  # feature 1 has two verdicts but counts once
