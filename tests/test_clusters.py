"""The density-cluster diagnostics against direct computations, on planted structure: a
low-density tail whose features share one encoder direction, and an antipodal dense pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import clusters

D_IN, D_SAE = 32, 200


def _planted():
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(D_IN, D_SAE, generator=g)
    u = torch.randn(D_IN, generator=g)
    W_enc[:, :30] = u[:, None] * 3 + 0.2 * torch.randn(D_IN, 30, generator=g)  # 30 share one direction
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    W_dec[199] = -W_dec[198]  # an antipodal dense pair
    rng = np.random.default_rng(0)
    density = np.concatenate(
        [
            10 ** rng.uniform(-6.3, -5.6, 40),  # the low-density mode: the 30 planted + 10 others
            10 ** rng.normal(-2.5, 0.3, 150),  # the main mode
            np.zeros(8),  # dead
            [0.3, 0.25],  # dense
        ]
    )
    return W_enc, W_dec, density


@pytest.mark.unit
def test_the_tail_is_found_and_shares_one_direction():
    W_enc, _, density = _planted()
    cut = clusters.tail_cut(density, floor=1e-7)
    assert 10**-5.6 < cut < 10**-3.5  # in the valley between the two modes
    tail = clusters.tail_direction(W_enc, density, cut)
    assert tail.n == 40
    enc = torch.nn.functional.normalize(W_enc.T, dim=-1).numpy()
    mean = enc[:40].mean(0)
    mean /= np.linalg.norm(mean)
    np.testing.assert_allclose(tail.cosine, enc @ mean, rtol=1e-5, atol=1e-6)
    assert tail.share == pytest.approx(30 / 40)
    assert (tail.cosine[:30] > clusters.TAIL_COSINE).all() and (tail.cosine[30:40] < 0.6).all()


@pytest.mark.unit
def test_a_unimodal_layer_falls_back_to_the_ultralow_cut():
    from backend.density import ULTRALOW

    density = 10 ** np.random.default_rng(1).normal(-2.5, 0.4, 500)
    assert clusters.tail_cut(density, floor=1e-7) == ULTRALOW
    tail = clusters.tail_direction(torch.randn(D_IN, 500), density, ULTRALOW)
    assert tail.n == 0 and tail.share is None and np.isnan(tail.cosine).all()


@pytest.mark.unit
def test_dense_features_find_their_antipodal_partner():
    _, W_dec, density = _planted()
    partner, cosine = clusters.antipodal(W_dec, density)
    assert partner[198] == 199 and partner[199] == 198
    assert cosine[198] == pytest.approx(-1.0, abs=1e-6)
    assert (partner[:198] == -1).all() and np.isnan(cosine[:198]).all()


@pytest.mark.unit
def test_feature_map_pca_is_the_decoder_directions_principal_plane():
    _, W_dec, _ = _planted()
    for narrow in (False, True):  # an SAE too narrow for UMAP's neighbourhoods gets the principal plane too
        w = W_dec[: 4 * clusters.UMAP_NEIGHBOURS] if narrow else W_dec
        xy, method = clusters.feature_map(w, method="umap" if narrow else "pca")
        assert method == "pca" and xy.shape == (len(w), 2)
        d = torch.nn.functional.normalize(w, dim=-1).numpy()
        c = d - d.mean(0)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        np.testing.assert_allclose(np.abs(xy), np.abs(c @ vt[:2].T), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_feature_map_umap_groups_near_directions_and_repeats_with_its_seed():
    """UMAP by default: features whose decoder directions are near copies of one another land
    together, apart from other groups, and the same seed gives the same layout."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g)
    W_dec = (centres.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 32, generator=g)) * 3.0
    xy, method = clusters.feature_map(W_dec, seed=1)
    assert method == "umap" and xy.shape == (200, 2) and np.isfinite(xy).all()
    group = np.repeat(np.arange(4), 50)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same, other = dist[group[:, None] == group[None]], dist[group[:, None] != group[None]]
    assert np.median(same) * 5 < np.median(other)
    again, _ = clusters.feature_map(W_dec, seed=1)
    np.testing.assert_array_equal(xy, again)


@pytest.mark.integration
def test_clusters_page_and_verdict_histogram(tmp_path, corpus_file, sae_dirs, adapter, loaded_saes, monkeypatch):
    from backend.engine.pipeline import precompute
    from backend.labels import Label, add
    from tests.helpers import app_runner, tiny_config

    d = tmp_path / "data"
    d.mkdir()
    precompute(tiny_config(str(d / "c.duckdb"), corpus_file, sae_dirs), adapter, loaded_saes)
    run = app_runner(d, monkeypatch)
    at = run("pages/8_Clusters.py", sae="relu-b0")
    assert not at.exception and not at.error, [e.value for e in at.error]
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    # a narrow SAE's map is SVG points (quicker to draw than a WebGL context is to start); test_figures: wide ones tiles
    assert '"type":"scatter"' in specs[0] and "scattergl" not in specs[0] and "log10 density" in specs[0]
    assert any("Dense features" in h.value for h in at.subheader)
    dense = next(t.value for t in at.dataframe if "partner_page" in t.value.columns)
    assert dense["open"].tolist() == [f"Feature?db=c.duckdb&sae=relu-b0&feature={f}" for f in dense["feature"]]
    # the tail's few features stay visible: each group in shares of itself, and one tick per tail feature
    import json

    tail = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "tail's mean direction" in c.proto.spec))
    bars = [t for t in tail["data"] if t["type"] == "bar"]  # binned on the server: 40 bars each, in percent
    assert len(bars) == 2 and all(abs(sum(_values(b["y"])) - 100) < 1e-6 for b in bars)
    ticks = next(t for t in tail["data"] if t["name"] == "each tail feature")
    n_tail, n_other = (int(b["name"].split("(")[1].rstrip(")").replace(",", "")) for b in bars)
    assert 0 < n_tail == len(_values(ticks["x"])) < n_other
    # positional dense features: the tiny model's position embeddings make some of them fire in bands
    import duckdb

    from backend.density import DENSE
    from backend.positions import POSITIONAL_BITS

    con = duckdb.connect(str(d / "c.duckdb"), read_only=True)
    want = con.execute(
        """SELECT feature, pos_kl, pos_fire FROM features JOIN feature_diagnostics USING (sae, feature)
           WHERE sae = 'relu-b0' AND density > ? AND pos_kl >= ? ORDER BY pos_kl DESC""",
        [DENSE, POSITIONAL_BITS],
    ).df()
    con.close()
    assert len(want) >= 1, "the tiny model has no positional dense feature: the test proves nothing"
    assert any("Positional dense features" in h.value for h in at.subheader)
    listed = next(t.value for t in at.dataframe if "bands" in t.value.columns)
    assert listed["feature"].tolist() == want["feature"].tolist()
    top = want.iloc[0]
    busiest = int(np.argmax(top.pos_fire))  # bucket of width 1: the position itself
    lo, hi = (int(x) for x in listed["bands"].iloc[0].split(",")[0].split("–"))
    assert lo <= busiest <= hi
    # ... and the Feature page draws its profile and says it is positional
    at = run("pages/2_Feature.py", sae="relu-b0", feature=str(int(top.feature)))
    assert not at.exception and not at.error
    said = [m.value for m in at.markdown if "Where in the sequence it fires" in m.value]
    assert said and f"positional: {top.pos_kl:.2f} bits" in said[0] and "not positional" not in said[0]
    assert any("token position" in c.proto.spec for c in at.get("plotly_chart"))
    at = run("pages/8_Clusters.py", sae="relu-b0", sel="4,5,6")
    assert not at.exception and at.dataframe[0].value["feature"].tolist() == [4, 5, 6]
    at = run("pages/8_Clusters.py", sae="relu-b0", sel="four")
    assert "sel='four'" in at.error[0].value
    # a verdict makes the Layer page stack its density histogram by verdict
    run_id = (
        __import__("duckdb")
        .connect(str(d / "c.duckdb"), read_only=True)
        .execute("SELECT run_id FROM runs")
        .fetchone()[0]
    )
    add(str(d / "labels.sqlite"), Label("c.duckdb", run_id, "relu-b0", 20, "interpretable", "ann"))
    at = run("pages/1_Layer.py", sae="relu-b0")
    assert not at.exception and not at.error
    # beside the main histogram (columns of one row), labeled features only by default: one label shows
    left, right = at.columns[0], at.columns[1]
    assert '"dragmode":"select"' in left.get("plotly_chart")[0].proto.spec
    spec = right.get("plotly_chart")[0].proto.spec
    assert '"name":"interpretable"' in spec and '"barmode":"stack"' in spec and '"name":"unlabeled"' not in spec
    at = run("pages/1_Layer.py", sae="relu-b0", verdicts="all", vcount="log")
    spec = next(c.proto.spec for c in at.get("plotly_chart") if '"barmode":"stack"' in c.proto.spec)
    assert '"name":"unlabeled"' in spec and '"type":"log"' in spec
    at = run("pages/1_Layer.py", sae="relu-b0", vcount="sqrt")
    assert "vcount='sqrt'" in at.error[0].value


@pytest.mark.unit
def test_position_bits_and_bands_find_what_a_correlation_misses():
    """A feature firing in two narrow bands at opposite ends correlates with position at about 0,
    yet its firings are far from the tokens' spread: bits above the positional cut, both bands named."""
    from backend.positions import POSITIONAL_BITS, bands, describe_bands, position_kl

    tokens = np.full(32, 1000)  # 32 buckets of 4 positions, 128 positions, equal tokens at each
    even = np.full(32, 50)
    banded = np.zeros(32)
    banded[[2, 3]] = 400  # positions 8-15
    banded[[28, 29, 30]] = 300  # positions 112-123
    one = np.zeros(32)
    one[5] = 7
    kl = position_kl(np.stack([even, banded, one, np.zeros(32)]), tokens)
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    assert kl[1] == pytest.approx(sum(p * np.log2(p * 32) for p in [400 / 1700] * 2 + [300 / 1700] * 3))
    assert kl[1] > POSITIONAL_BITS
    assert kl[2] == pytest.approx(5.0) and np.isnan(kl[3])  # log2(32): all in one bucket; dead: NaN
    pos = np.repeat(np.arange(128), 1)
    rate = np.repeat(banded / tokens, 4)
    assert abs(np.corrcoef(rate, pos)[0, 1]) < 0.35  # what a linear correlation sees
    assert bands(banded, tokens, 4, 128) == [(112, 123), (8, 15)]  # the band with the most firings first
    assert describe_bands(bands(banded, tokens, 4, 128)) == "112–123, 8–15"
    assert bands(even, tokens, 4, 128) == [] and bands(np.zeros(32), tokens, 4, 128) == []
    # a shorter last bucket: 30 positions in buckets of 4 end at position 29
    assert bands(np.array([0, 0, 0, 0, 0, 0, 0, 9]), np.array([4] * 7 + [2]), 4, 30) == [(28, 29)]


def _values(v) -> np.ndarray:
    """A Plotly figure's array as JSON holds it: a list, or base64 bytes with their dtype."""
    import base64

    return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]) if isinstance(v, dict) else np.asarray(v)
