"""Labels joined with feature databases: the labeled features' densities, the Layer table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.density import TOO_FEW_FIRINGS
from backend.labels.store import latest
from backend.store import feature_lists, queries
from backend.store.feature_lists import ListSpec


def current_with_density(labels_loc: str, db_path: str) -> pd.DataFrame:
    """Latest labels of this database's SAEs, each with its feature's firing count, density and log10."""
    cur = latest(labels_loc, Path(db_path).name)
    if cur.empty:
        return cur.assign(
            count=pd.Series(dtype=float), density=pd.Series(dtype=float), log10_density=pd.Series(dtype=float)
        )
    cur = cur[cur["sae"].isin(set(queries.saes(db_path)["sae"]))]
    counts = queries.counts_of(db_path, cur)  # the labeled rows only: a cold page read every SAE's table
    return cur.merge(counts, on=["sae", "feature"], how="left").sort_values("sae", kind="stable", ignore_index=True)


def with_labels(features: pd.DataFrame, status: pd.DataFrame | None) -> pd.DataFrame:
    """`features` (one row per feature) with `label`: the consensus verdict from `status`
    (feature_status's frame), "" where nobody labeled the feature. The one join of labels onto
    features that every page uses."""
    if status is None or status.empty:
        return features.assign(label="")
    out = features.merge(status[["feature", "label"]], on="feature", how="left")
    return out.assign(label=out["label"].fillna("").astype(str))


def layer_rows(
    db_path: str, sae: str, status: pd.DataFrame | None, spec: ListSpec, offset: int = 0, limit: int = 200
) -> pd.DataFrame:
    """A page of the Layer table: rows offset .. offset + limit of the SAE's list `spec`
    (feature_lists: filtered, sorted and paged in DuckDB), each with its consensus label from
    `status` (feature_status's frame), or, unlabeled and fired fewer than TOO_FEW_FIRINGS times,
    "too few firings to judge (n)"."""
    shown = with_labels(feature_lists.page(db_path, sae, spec, offset, limit), status)
    few = (shown["label"] == "") & (shown["count"] > 0) & (shown["count"] < TOO_FEW_FIRINGS)
    return shown.assign(
        label=shown["label"].where(~few, shown["count"].map(lambda n: f"too few firings to judge ({n})"))
    )
