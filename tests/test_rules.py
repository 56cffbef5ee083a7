"""Unit tests of the rules everything else relies on: density, agreement statistics, the
password check, markdown escaping. Pure functions, no files, no model."""

from __future__ import annotations

import math

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
    import numpy as np

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


def test_password_check_compares_bytes_and_slows_guessing():
    from backend.labels.access import Throttle, password_matches

    assert password_matches("pässwört-密码", "pässwört-密码")
    assert not password_matches("passwort", "pässwört-密码")
    assert not password_matches("", "x")
    t = Throttle(base=0.01, cap=0.04)
    delays = []
    for _ in range(5):
        delays.append(t.delay())
        assert not t.check("wrong", "right")
    assert delays == [0.0, 0.01, 0.02, 0.04, 0.04]
    assert t.check("right", "right") and t.delay() == 0.0


def test_density_rules_have_one_meaning():
    from backend.density import (
        DENSE,
        ULTRALOW,
        bucket_order,
        density_bucket,
        is_dense,
        is_ultralow,
        log10_density,
        log_density_edges,
        log_density_histogram,
    )

    assert not is_dense(DENSE) and is_dense(np.nextafter(DENSE, 1))  # dense is strictly above 0.1
    assert (
        bool(is_ultralow(np.float64(9e-6), 3)) and not bool(is_ultralow(0.0, 0)) and not bool(is_ultralow(ULTRALOW, 1))
    )
    assert math.isnan(log10_density(0.0)) and log10_density(0.01) == pytest.approx(-2)
    np.testing.assert_allclose(log10_density(np.array([0.0, 1.0, 1e-3])), [np.nan, 0.0, -3.0])
    assert density_bucket(None) == density_bucket(float("nan")) == "dead"
    assert density_bucket(-5.5) == "ultralow (<1e-5)" and density_bucket(-0.5) == "dense (>1e-1)"
    assert bucket_order()[0] == "dead" and bucket_order()[-1] == "dense (>1e-1)"
    edges = log_density_edges(np.array([-3.04, -0.2]))
    assert edges[0] == pytest.approx(-3.1) and edges[-1] == 0.0
    counts, edges = log_density_histogram(np.array([0.0, 1.0, 0.001, 0.5]))
    assert counts.sum() == 3  # the dead feature is left out, density 1 lands in the last bin
    assert counts[-1] >= 1


def test_markdown_escaping_shows_text_as_typed():
    from ui.tokens import md

    wj = "\u2060"  # breaks URL and email autolinks, invisibly
    assert md("![p](http://127.0.0.1:8699/p.png)") == "\\!\\[p\\]\\(http\\:" + wj + "//127.0.0.1\\:8699/p.png\\)"
    assert md("www.x.org a@b.c") == f"w{wj}ww.x.org a@{wj}b.c"
    assert md("<img src=x>") == r"\<img src=x\>"
    assert md("- item") == r"\- item" and md("3. item") == r"3\. item" and md("# h") == r"\# h"
    assert md(":smile: $x$") == r"\:smile\: \$x\$"
    assert md("a\nb") == "a b"
    assert md("view='sideways'") == "view='sideways'"


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


def _saes_frame():
    rows = []
    for depth, hook in (
        (-0.5, "blocks.0.hook_resid_pre"),
        (0.5, "blocks.0.hook_resid_post"),
        (1.5, "blocks.1.hook_resid_post"),
    ):
        for arch in ("standard", "topk"):
            rows.append({"sae": f"{arch}-{hook}", "hook": hook, "depth": depth, "architecture": arch})
    return pd.DataFrame(rows)


def test_charts_colour_by_depth_style_by_architecture_and_mark_dense_and_floor():
    from ui import figures

    saes = _saes_frame()
    colours = figures.depth_colours(saes)
    assert colours["standard-blocks.0.hook_resid_pre"] == colours["topk-blocks.0.hook_resid_pre"]  # same depth
    assert len(set(colours.values())) == 3
    hist = pd.DataFrame(
        [{"sae": s, "bin_lo": -3.0, "bin_hi": -2.9, "n": 5} for s in saes["sae"]]
        + [{"sae": s, "bin_lo": -0.6, "bin_hi": -0.5, "n": 2} for s in saes["sae"]]
    )
    fig = figures.density_histograms(hist, saes, "facet", floor=-4.8)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 6
    # one row per hook by depth, TopK and ReLU side by side
    assert [a.text for a in fig.layout.annotations if a.text in ("standard", "topk")] == ["standard", "topk"]
    lines = {round(s.x0, 3) for s in fig.layout.shapes}
    assert lines == {-1.0, -4.8}
    over = figures.density_histograms(hist, saes, "overlay", floor=-4.8)
    styles = {t.name: (t.line.color, t.line.dash) for t in over.data if t.name and "·" in t.name}
    assert styles["0.resid_pre · standard"][0] == styles["0.resid_pre · topk"][0]
    assert styles["0.resid_pre · standard"][1] != styles["0.resid_pre · topk"][1]
    lines = figures.metric_lines(
        saes.assign(explained_variance=0.9, l0=3.0, downstream_value=0.5, dead_frac=0.0, dense_frac=0.1)
    )
    assert list(lines.layout.xaxis.ticktext) == ["0.resid_pre", "0.resid_post", "1.resid_post"]


def test_log_axes_have_full_labels_and_dead_features_no_histogram():
    from backend.density import format_density
    from ui import figures

    vals, text = figures.log_ticks(-1, 1)
    assert text == ["0.1", "0.2", "0.5", "1", "2", "5", "10"]
    hist = np.zeros(66, dtype=int)
    assert figures.activation_histogram(hist, -4, 4) is None
    hist[30:34] = 5
    fig = figures.activation_histogram(hist, -4, 4)
    assert all(t.replace(".", "").replace("e-", "").isdigit() for t in fig.layout.xaxis.ticktext)
    assert format_density(0.25) == "25.0%" and format_density(0.0123) == "1.23%"
    assert format_density(0.0) == "0 (dead)" and format_density(2e-6) == "2.00e-06"


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


def test_firing_thresholds_read_off_the_histogram():
    from backend.density import counts_at_least

    hist = np.zeros((2, 66), dtype=int)
    # bins of width 0.125 decades from 1e-4: value v lands in bin floor((log10 v + 4) / 0.125) + 1
    hist[0, 1 + 32] = 5  # ~1.0 (the max)
    hist[0, 1 + 8] = 7  # ~1e-3: a micro-activation, < 1% of the max
    hist[1, 0] = 2  # underflow only
    max_act = np.array([1.2, 1e-5])
    assert list(counts_at_least(hist, max_act, 0.0, -4, 4)) == [12, 2]
    assert list(counts_at_least(hist, max_act, 0.01, -4, 4)) == [5, 2]
    assert list(counts_at_least(hist, max_act, 0.1, -4, 4)) == [5, 2]
