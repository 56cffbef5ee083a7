"""The blind label queue: which feature a labeler judges next."""

from __future__ import annotations

import pandas as pd

from backend.density import TOO_FEW_FIRINGS, bucket_order, density_buckets

MODES = {
    "unlabeled": "only features nobody labeled",
    "agreement": "features others labeled, not yet by me",
    "disagreements": "where the automatic score and the team disagree, then unlabeled ones",
}


def candidates(
    features: pd.DataFrame, current: pd.DataFrame, me: str, mode: str, disputed: set[int] | None = None
) -> pd.DataFrame:
    """Features this labeler may be shown in this mode (those that fired at least
    TOO_FEW_FIRINGS times), with their density bucket.
    `features`: the SAE's feature table (feature, count, log10_density); `current`: the latest
    verdicts on this SAE; `disputed`: features whose automatic score disagrees with the team's
    verdict (mode "disagreements": those this labeler has not judged come first)."""
    if mode not in MODES:
        raise ValueError(f"unknown queue mode {mode!r}")
    live = features[features["count"] >= TOO_FEW_FIRINGS]
    live = live.assign(bucket=density_buckets(live["log10_density"]))
    labeled = set(current["feature"]) if not current.empty else set()
    mine = set(current[current["labeler"] == me]["feature"]) if not current.empty else set()
    if mode == "disagreements":
        first = live[live["feature"].isin(set(disputed or ()) - mine)]
        if len(first):
            return first
        mode = "unlabeled"
    if mode == "unlabeled":
        return live[~live["feature"].isin(labeled)]
    return live[live["feature"].isin(labeled - mine)]


def next_feature(
    features: pd.DataFrame, current: pd.DataFrame, me: str, mode: str, step: int, disputed: set[int] | None = None
) -> int | None:
    """Round-robin over density buckets by `step`; a seeded random feature inside the bucket."""
    pool = candidates(features, current, me, mode, disputed)
    present = set(pool["bucket"].unique())  # not a Python pass over a million features' buckets
    buckets = [b for b in bucket_order() if b in present]
    if not buckets:
        return None
    bucket = buckets[step % len(buckets)]
    return int(pool[pool["bucket"] == bucket].sample(1, random_state=step % 2**32)["feature"].iloc[0])


def still_eligible(
    features: pd.DataFrame, current: pd.DataFrame, me: str, mode: str, feature: int, disputed: set[int] | None = None
) -> bool:
    """Whether a feature already on screen still belongs in the queue (the mode may have changed)."""
    return bool((candidates(features, current, me, mode, disputed)["feature"] == feature).any())
