"""What bench/dashboard.py --scale says of its figures (the benchmark itself never runs as a test)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_the_scale_line_says_which_targets_are_met_and_which_missed():
    from bench import dashboard

    line = {"db_gb": "15.63", "overview_s": "0.44", "layer_s": "1.00", "layer_mb": "0.04", "feature_p95_ms": "116.7"}
    line |= {"search_s": "1.22", "search_common_s": "3.78", "browser_p95_s": "2.81", "browser_in_app_p95_s": "1.63"}
    assert dashboard.against_targets(line) == (
        "targets met: overview_s, layer_s, layer_mb, search_s; "  # a figure at its target meets it
        "missed: feature_p95_ms 116.7 > 100, search_common_s 3.78 > 3, browser_p95_s 2.81 > 2"
    )
    # --browser-rounds 0: no browser figure, none judged
    assert dashboard.against_targets({"overview_s": "0.4"}) == "targets met: overview_s; missed: none"
    # the browser figures: full loads by URL after the first round, and the app's own links, apart
    res = {"overview": [1.0, 2.0], "overview (cold)": [9.0], "overview drawn": [3.0], "overview loaded": [0.2]}
    res |= {"verdict": [0.5], "next": [0.6], "overview (in app)": [0.7], "feature next (in app)": [0.8]}
    assert dashboard._full_loads(res) == [1.0, 2.0] and dashboard._in_app(res) == [0.7, 0.8]
