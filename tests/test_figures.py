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
