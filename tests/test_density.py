"""The density rules (backend.density): one meaning for dense, ultralow, buckets and firing."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.unit


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


def test_buckets_of_an_array_are_each_values_bucket():
    from backend.density import density_bucket, density_buckets

    edges = [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0]
    values = np.array([np.nan, -np.inf, -9.0, *edges, *(np.nextafter(e, -1) for e in edges), -3.3, 0.5])
    assert density_buckets(values).tolist() == [density_bucket(v) for v in values]


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
