"""Labels joined with feature databases: the labeled features' densities, the Layer table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.labels.store import latest
from backend.store import queries


def current_with_density(labels_loc: str, db_path: str) -> pd.DataFrame:
    """Latest labels of this database's SAEs, each with its feature's density and log10."""
    cur = latest(labels_loc, Path(db_path).name)
    if cur.empty:
        return cur.assign(density=pd.Series(dtype=float), log10_density=pd.Series(dtype=float))
    cur = cur[cur["sae"].isin(set(queries.saes(db_path)["sae"]))]
    parts = [
        g.merge(queries.features(db_path, sae)[["feature", "density", "log10_density"]], on="feature", how="left")
        for sae, g in cur.groupby("sae")
    ]
    if not parts:
        return cur.assign(density=pd.Series(dtype=float), log10_density=pd.Series(dtype=float))
    return pd.concat(parts, ignore_index=True)


def layer_table(
    db_path: str,
    sae: str,
    status: pd.DataFrame | None = None,
    preset: str = "all",
    lo: float | None = None,
    hi: float | None = None,
    sort: tuple[str, bool] = ("density", False),
    firing: str = "any",
) -> pd.DataFrame:
    """The Layer page's table: the SAE's features in a preset and log10-density range, sorted
    (ties by feature id), each with its consensus label from `status` (feature_status's frame);
    densities count activations per `firing` (queries.features)."""
    shown = queries.filter_features(queries.features(db_path, sae, firing), preset, lo, hi)
    col, ascending = sort
    shown = shown.sort_values([col, "feature"], ascending=[ascending, True])
    if status is None or status.empty:
        return shown.assign(label="")
    return shown.merge(status[["feature", "label"]], on="feature", how="left")
