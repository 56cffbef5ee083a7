"""Chart builders (ui.figures): colours, marks and axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.unit


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
    assert lines == {-1.0, -5.0, -4.8}  # dense cut, ultralow cut, resolution floor
    assert fig.layout.legend.y > 1  # above the plot: never over the x axis's title
    over = figures.density_histograms(hist, saes, "overlay", floor=-4.8)
    styles = {t.name: (t.line.color, t.line.dash) for t in over.data if t.name and "·" in t.name}
    assert styles["0.resid_pre · standard"][0] == styles["0.resid_pre · topk"][0]
    assert styles["0.resid_pre · standard"][1] != styles["0.resid_pre · topk"][1]
    heat = figures.density_histograms(hist, saes, "heatmap", floor=-4.8)
    maps = [t for t in heat.data if t.type == "heatmap"]
    assert len(maps) == 2  # one panel per architecture, one row per hook by depth
    assert list(maps[0].y) == ["0.resid_pre", "0.resid_post", "1.resid_post"]
    z = np.asarray(maps[0].z, dtype=float)
    np.testing.assert_allclose(np.nansum(z, axis=1), 1.0)  # each row: shares of its SAE's live features
    assert np.nanmax(z) == pytest.approx(5 / 7)
    assert {round(s.x0, 3) for s in heat.layout.shapes} == {-1.0, -5.0, -4.8}
    # two SAEs of one architecture at one hook (a wide one beside the usual width) keep a row each
    wide = pd.DataFrame(
        [{"sae": "topk-wide", "hook": "blocks.1.hook_resid_post", "depth": 1.5, "architecture": "topk"}]
    )
    both = pd.concat([saes, wide], ignore_index=True)
    more = pd.concat([hist, pd.DataFrame([{"sae": "topk-wide", "bin_lo": -3.0, "bin_hi": -2.9, "n": 9}])])
    topk = [t for t in figures.density_histograms(more, both, "heatmap").data if t.type == "heatmap"][1]
    assert list(topk.y)[-2:] == ["1.resid_post · topk-blocks.1.hook_resid_post", "1.resid_post · topk-wide"]
    assert np.nansum(np.asarray(topk.z, dtype=float)[-1]) == pytest.approx(1.0)
    lines = figures.metric_lines(
        saes.assign(explained_variance=0.9, l0=3.0, downstream_value=0.5, dead_frac=0.0, dense_frac=0.1)
    )
    assert list(lines.layout.xaxis.ticktext) == ["0.resid_pre", "0.resid_post", "1.resid_post"]


def test_a_layer_histogram_marks_the_dense_cut_the_floor_this_feature_and_the_selection():
    from ui import figures

    feats = pd.DataFrame({"log10_density": np.random.default_rng(0).normal(-3, 1, 500)})
    fig = figures.layer_histogram(feats, selected=(-4.0, -2.0), marker=-2.5, floor=-6.0)
    lines = {round(s.x0, 3): s for s in fig.layout.shapes if s.type == "line"}
    assert set(lines) == {-1.0, -6.0, -2.5}
    assert all(s.xref == "x" and s.yref == "y domain" and (s.y0, s.y1) == (0, 1) for s in lines.values())
    assert lines[-2.5].line.color == "red" and lines[-1.0].line.dash == "dot"
    [rect] = [s for s in fig.layout.shapes if s.type == "rect"]
    assert (rect.x0, rect.x1, rect.yref) == (-4.0, -2.0, "y domain")
    notes = {a.text: (a.x, a.xanchor, a.yanchor) for a in fig.layout.annotations}
    assert notes == {
        "dense": (-1.0, "center", "bottom"),
        "floor (1 / tokens)": (-6.0, "left", "top"),
        "this feature": (-2.5, "left", "top"),
    }
    bare = figures.layer_histogram(feats)  # no floor, marker or selection: the dense cut alone
    assert [round(s.x0, 3) for s in bare.layout.shapes] == [-1.0] and len(bare.layout.annotations) == 1


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


def test_the_output_heatmap_orders_rows_by_the_spliced_saes_depth():
    from ui import figures

    out = pd.DataFrame(
        {
            "mode": ["alone"] * 3 + ["ablated"],
            "sae": [
                "relu-blocks.0.hook_resid_post",
                "relu-blocks.0.hook_resid_pre",
                "relu-blocks.1.hook_resid_post",
                "x",
            ],
            "spliced_hook": ["blocks.0.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "x"],
            "architecture": ["relu"] * 4,
            "depth": [1, 0, 2, 0],
            "harm": [0.2, 0.1, 0.3, 0.0],
        }
    )
    cells = figures.output_cells(out)
    assert (cells["hook"] == "output").all() and list(cells["spliced_depth"]) == [1, 0, 2]
    fig = figures.propagation_heatmap(cells, "harm", {s: None for s in cells["sae"]})
    assert list(fig.data[0].y) == ["0.resid_pre", "0.resid_post", "1.resid_post"]  # shallow first, reversed axis


def _diagnostics(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    density = np.where(rng.random(n) < 0.05, 0.0, 10 ** rng.uniform(-6, -0.3, n))
    label = np.where(rng.random(n) < 0.01, "interpretable", "")
    return pd.DataFrame(
        {
            "feature": np.arange(n),
            "density": density,
            "log10_density": np.where(density > 0, np.log10(np.where(density > 0, density, 1)), np.nan),
            "label": label,
            "map_x": rng.normal(size=n),
            "map_y": rng.normal(size=n),
            "tail_cos": rng.uniform(-1, 1, n),
        }
    )


def test_a_wide_saes_map_is_tiles_of_every_feature_with_labeled_and_dense_ones_as_points():
    from ui import figures

    small = _diagnostics(2_000)
    assert {t.type for t in figures.feature_map(small, "umap").data} == {"scatter"}  # each feature a point
    assert sum(len(t.x) for t in figures.feature_map(small, "umap").data) == 2_000
    wide = _diagnostics(120_000)
    fig = figures.feature_map(wide, "umap")
    heat = [t for t in fig.data if t.type == "heatmap"]
    points = [t for t in fig.data if t.type == "scatter"]
    assert len(heat) == 2 and {t.type for t in fig.data} == {"heatmap", "scatter"}  # no WebGL context to start
    # every feature is in a tile: the tiles' counts add up to all of them, live ones coloured by their median
    counts = np.nan_to_num(np.asarray(heat[1].text, dtype=float))
    assert counts.sum() == 120_000 and counts.shape == (figures.MAP_TILES, figures.MAP_TILES)
    live = wide[wide["density"] > 0]
    t = figures.map_tiles(wide)
    assert t["live"].sum() == len(live)
    busiest = np.unravel_index(np.argmax(t["live"]), t["live"].shape)
    xe = np.linspace(wide["map_x"].min(), wide["map_x"].max(), figures.MAP_TILES + 1)
    ye = np.linspace(wide["map_y"].min(), wide["map_y"].max(), figures.MAP_TILES + 1)
    ix = np.clip(np.searchsorted(xe, live["map_x"], side="right") - 1, 0, figures.MAP_TILES - 1)
    iy = np.clip(np.searchsorted(ye, live["map_y"], side="right") - 1, 0, figures.MAP_TILES - 1)
    there = live[(iy == busiest[0]) & (ix == busiest[1])]
    assert len(there) == t["live"][busiest] and t["median"][busiest] == pytest.approx(there["log10_density"].median())
    # every labeled and every dense feature is still a point, with its id to open it
    few = wide.assign(density=np.where(np.arange(120_000) % 400 == 0, 0.3, wide["density"].clip(upper=0.05)))
    must = few[(few["label"] != "") | (few["density"] > 0.1)]
    traces = figures.feature_map(few, "umap").data
    drawn = np.concatenate([np.asarray(p.customdata) for p in traces if p.type == "scatter"])
    assert sorted(drawn) == sorted(must["feature"]) and len(drawn) < figures.OVERLAY_POINTS
    assert len(fig.to_json()) < 1_000_000  # what travels is bounded by the tiles, not the 120,000 features
    # more than a browser draws well (here 14,000 dense): all labeled ones, a fixed sample of the dense ones
    drawn = np.concatenate([np.asarray(p.customdata) for p in points])
    labeled, dense = set(wide.loc[wide["label"] != "", "feature"]), set(wide.loc[wide["density"] > 0.1, "feature"])
    assert len(drawn) == figures.OVERLAY_POINTS and labeled <= set(drawn) <= labeled | dense
    assert figures.map_overlay(wide)["feature"].tolist() == sorted(drawn)


def test_a_selection_takes_every_point_inside_its_boxes_and_lassos():
    from backend import selection

    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, 20_000), rng.uniform(-1, 1, 20_000)
    box = {"box": [{"x": [0.5, -0.25], "y": [-0.5, 0.0]}]}  # corners in any order
    assert (selection.inside(x, y, box) == ((x >= -0.25) & (x <= 0.5) & (y >= -0.5) & (y <= 0))).all()
    # a lasso: the unit disc as a 200-gon, and an L shape (not convex), against their own rules
    a = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    disc = selection.inside(x, y, {"lasso": [{"x": 0.8 * np.cos(a), "y": 0.8 * np.sin(a)}]})
    r = np.hypot(x, y)
    assert disc[r < 0.79].all() and not disc[r > 0.8].any()
    ell = {"lasso": [{"x": [0, 1, 1, 0.5, 0.5, 0], "y": [0, 0, 0.5, 0.5, 1, 1]}]}
    want = (x >= 0) & (y >= 0) & ((x <= 1) & (y <= 0.5) | (x <= 0.5) & (y <= 1))
    assert (selection.inside(x, y, ell) == want).all()
    # several shapes: their union; none, or a degenerate lasso: nothing
    both = selection.inside(x, y, {**box, **ell})
    assert (both == (selection.inside(x, y, box) | want)).all()
    assert not selection.inside(x, y, {}).any()
    assert not selection.inside(x, y, {"lasso": [{"x": [0, 1], "y": [0, 1]}]}).any()


def test_the_tail_histogram_sends_bins_as_shares_of_each_group():
    from ui import figures

    df = _diagnostics(100_000)
    fig = figures.tail_cosines(df, cut=1e-4)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 and all(len(b.x) == 40 for b in bars)  # 40 bins travel, not 100,000 values
    live = df[df["density"] > 0]
    tail = live[live["density"] < 1e-4]
    want, _ = np.histogram(tail["tail_cos"], bins=np.linspace(-1, 1, 41))
    np.testing.assert_allclose(bars[0].y, 100 * want / len(tail))
    assert abs(sum(bars[1].y) - 100) < 1e-9


def test_a_shared_figure_is_built_once_per_frame_and_escaped_once():
    from ui import figures

    saes = _saes_frame().assign(architecture=["<b>x</b>", "topk"] * 3)
    for c in ("l0", "explained_variance", "ev_inside", "ev_beyond", "downstream_value", "dead_frac", "dense_frac"):
        saes[c] = np.linspace(0.1, 0.6, len(saes))
    built = []
    builder = figures.shared(
        lambda df, unit: (
            built.append(1) or figures.go.Figure(figures.go.Bar(x=df["architecture"], y=[1] * len(df), name=unit))
        )
    )
    first = builder(saes, "<i>u</i>")
    # the same cached frame (the query layer returns one object until the database changes): no rebuild
    assert builder(saes, "<i>u</i>") is first and len(built) == 1
    assert builder(saes.copy(), "<i>u</i>") is not first and len(built) == 2  # another frame: built anew
    assert builder(saes, "nats") is not first and len(built) == 3
    # escaped when built, and left as it is when a page draws it (common.chart calls plain again)
    assert first.data[0].name == "&lt;i&gt;u&lt;/i&gt;" and first.data[0].x[0] == "&lt;b&gt;x&lt;/b&gt;"
    assert figures.plain(first).data[0].name == "&lt;i&gt;u&lt;/i&gt;"
    # the pages' slow builders are shared: the Overview's two figures come back as the same objects
    assert figures.metric_lines(saes) is figures.metric_lines(saes)


def test_margins_hold_the_labels_legend_and_colour_bar_and_are_never_lowered():
    """ui.margins: what each side needs for what Plotly's automargin would push into it."""
    import plotly.graph_objects as go

    from ui import figures, margins

    hooks = ["0.resid_pre", "11.resid_post"]
    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]], y=hooks, x=[-2.0, -1.0], colorbar=dict(title="share of its")))
    fig.update_layout(margin=dict(l=10, r=10, t=30, b=10), xaxis_title="log10 density")
    figures.plain(fig)
    m = fig.layout.margin
    widest = margins.text_px("11.resid_post")
    assert m.l >= margins.PAD + widest and m.l < margins.PAD + widest + 2 * margins.SLACK  # the longest hook fits
    assert m.b >= margins.PAD + 12 * 1.3 + margins.STANDOFF["x"] + margins.TITLE  # tick labels and the axis title
    assert m.r >= 10 + 30 + margins.text_px("share of its")  # the trace's colour bar and its title
    assert m.t == 30  # nothing pushes the top: the figure's own margin stays

    wide = go.Figure([go.Scatter(x=[1, 2], y=[1, 2], name=n) for n in ("ReLU (L1)", "a much longer name")])
    wide.update_layout(margin=dict(l=300, r=10, t=10, b=10))
    figures.plain(wide)
    assert wide.layout.margin.l == 300  # never lowered
    assert wide.layout.margin.r >= margins.ITEM + margins.text_px("a much longer name")  # the vertical legend
    alone = go.Figure(go.Scatter(x=[1, 2], y=[1, 2], name="a much longer name"), layout=dict(margin=dict(r=10)))
    assert figures.plain(alone).layout.margin.r < 20  # a lone trace has no legend to make room for

    turned = go.Figure(go.Scatter(x=hooks, y=[1, 2]))
    turned.update_layout(margin=dict(l=10, r=10, t=10, b=10))
    turned.update_xaxes(tickangle=-60)
    flat = go.Figure(turned)
    flat.update_xaxes(tickangle=0)
    assert figures.plain(turned).layout.margin.b > figures.plain(flat).layout.margin.b  # turned labels stand taller


def test_numeric_tick_labels_are_measured_from_the_axis_range():
    from ui.margins import numeric_chars

    assert numeric_chars(0, 140) == 3  # "140"
    assert numeric_chars(0, 0.03) == 5  # "0.025"
    assert numeric_chars(-0.5, 1.0) >= 4  # "−0.5"
    assert numeric_chars(0, 250_000) == 4  # "250k"
