"""The Layer list filtered, sorted and paged in DuckDB equals the density rules applied in pandas."""

from __future__ import annotations

import itertools
import shutil

import duckdb
import pandas as pd
import pytest

from backend.density import is_dense, is_ultralow
from backend.errors import UserError
from backend.store import feature_lists, queries
from backend.store.feature_lists import ListSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(tiny_db, tmp_path_factory) -> str:
    """The tiny database with some of relu-b0's features made ultralow and dense, so every preset
    has members (1,240 tokens cannot measure a density below 1e-5 by themselves)."""
    path = str(tmp_path_factory.mktemp("lists") / "tiny.duckdb")
    shutil.copy(tiny_db, path)
    con = duckdb.connect(path)
    con.execute("UPDATE features SET density = 3e-6 WHERE sae = 'relu-b0' AND count > 0 AND feature % 5 = 1")
    con.execute("UPDATE features SET density = 0.25 WHERE sae = 'relu-b0' AND count > 0 AND feature % 7 = 2")
    con.close()
    queries.clear_caches()
    return path


def reference(db: str, sae: str, spec: ListSpec) -> list[int]:
    df = queries.features(db, sae, spec.firing)
    keep = pd.Series(True, index=df.index)
    if spec.preset == "dead":
        keep &= df["count"] == 0
    elif spec.preset == "ultralow":
        keep &= is_ultralow(df["density"], df["count"])
    elif spec.preset == "dense":
        keep &= is_dense(df["density"])
    if spec.lo is not None:
        keep &= df["log10_density"] >= spec.lo
    if spec.hi is not None:
        keep &= df["log10_density"] <= spec.hi
    df = df[keep].sort_values([spec.sort, "feature"], ascending=[spec.ascending, True])
    return df["feature"].tolist()


SPECS = [
    ListSpec(preset, lo, hi, firing, sort, asc)
    for preset, (lo, hi), firing, (sort, asc) in itertools.product(
        ["all", "dead", "ultralow", "dense"],
        [(None, None), (-2.05, -0.55), (None, -1.35)],
        ["any", "10pct"],
        [("density", False), ("density", True), ("max_act", False), ("feature", True)],
    )
]


def test_pages_and_neighbours_follow_the_density_rules(db):
    sizes = {spec.preset: 0 for spec in SPECS}
    for spec in SPECS:
        want = reference(db, "relu-b0", spec)
        sizes[spec.preset] = max(sizes[spec.preset], len(want))
        assert feature_lists.count(db, "relu-b0", spec) == len(want), spec
        got = pd.concat([feature_lists.page(db, "relu-b0", spec, lo, 7) for lo in range(0, 70, 7)])
        assert got["feature"].tolist() == want, spec
        # every row of a page is the feature's own row as the pages read it
        full = queries.features(db, "relu-b0", spec.firing).set_index("feature")
        pd.testing.assert_frame_equal(
            got.set_index("feature")[["count", "density", "max_act", "log10_density"]],
            full.loc[want, ["count", "density", "max_act", "log10_density"]],
            check_index_type=False,
        )
        for i in sorted({0, 1, len(want) // 2, len(want) - 2, len(want) - 1} & set(range(len(want)))):
            f = want[i]
            before = want[i - 1] if i else None
            after = want[i + 1] if i + 1 < len(want) else None
            assert feature_lists.around(db, "relu-b0", spec, f) == (i, before, after, len(want)), (spec, f)
        outside = next(iter(set(range(64)) - set(want)), None)
        if outside is not None:
            assert feature_lists.around(db, "relu-b0", spec, outside) == (None, None, None, len(want))
    assert all(n >= 3 for n in sizes.values()), sizes  # every preset was tried on a real list


def test_a_bad_list_is_a_message():
    with pytest.raises(UserError, match="sort 'count'"):
        ListSpec(sort="count")
    with pytest.raises(UserError, match="firing threshold 'lots'"):
        ListSpec(firing="lots")
    with pytest.raises(UserError, match="unknown filter 'weird'"):
        ListSpec(preset="weird")


def test_labels_join_their_features_counts_reading_only_the_labeled_rows(tiny_db, tmp_path):
    """Each current verdict of this database's SAEs gets its feature's count, density and log10
    density as the SAE's feature table holds them; a verdict on an SAE the file lacks is left out."""
    import numpy as np

    from backend import labels
    from backend.labels.joins import current_with_density

    store = str(tmp_path / "labels.sqlite")
    run_id = queries.saes(tiny_db)["run_id"].iloc[0]
    picks = [("relu-b0", 3), ("topk-b1", 7), ("relu-b0", 11), ("gone", 1)]
    for sae, f in picks:
        labels.add(store, labels.Label("tiny.duckdb", run_id, sae, f, "interpretable", "ann"))
    got = current_with_density(store, tiny_db)
    assert sorted(zip(got["sae"], got["feature"])) == sorted(p for p in picks if p[0] != "gone")
    for row in got.itertuples():
        want = queries.features(tiny_db, row.sae).set_index("feature").loc[row.feature]
        assert (row.count, row.density) == (want["count"], want["density"])
        assert np.isclose(row.log10_density, want["log10_density"], equal_nan=True)
