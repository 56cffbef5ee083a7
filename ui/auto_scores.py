"""Choosing which automatic score to set against the team's verdicts: one (source, explainer,
scorer) of an SAE's imported scores, and a threshold, both bound to the URL."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from backend.errors import UserError
from backend.explanations import against_verdicts as av
from backend.explanations import store
from ui import common
from ui.tokens import md


def scores_of(db: str, sae: str | None = None) -> pd.DataFrame | None:
    """The imported explanations with their scores (store.for_sae), or None with a warning
    where the store cannot be read."""
    try:
        return store.for_sae(store.location(), Path(db).name, sae)
    except UserError as e:
        st.warning(md(e))
        return None


def label(kind) -> str:
    return " · ".join(x for x in (kind.scorer, kind.source, kind.explainer or "explainer not recorded"))


def choose(scores: pd.DataFrame, container=None) -> tuple[pd.Series, pd.DataFrame, float] | None:
    """(the chosen kind, its per-feature scores, the threshold); None where nothing is scored.
    URL: `score` names the kind (scorer · source · explainer), `thr` the threshold."""
    kinds = av.kinds(scores)
    if kinds.empty:
        return None
    options = {label(k): f"{label(k)} ({k.n_features:,} features)" for k in kinds.itertuples()}
    picked = common.choice(
        "score", options, "Automatic score", next(iter(options)), widget="selectbox", container=container
    )
    kind = kinds.iloc[list(options).index(picked)]
    thr = common.float_param("thr")
    thr = av.DEFAULT_THRESHOLD if thr is None else thr
    if not 0.0 <= thr <= 1.0:
        raise UserError(f"URL parameter thr={thr} is out of range (0 .. 1)")
    common.seed("w_thr", "thr", thr)
    (container or st).number_input(
        f"Threshold (a score at or above it counts as interpretable; default {av.DEFAULT_THRESHOLD})",
        min_value=0.0,
        max_value=1.0,
        step=0.05,
        key="w_thr",
        on_change=common.to_url,
        args=("w_thr", "thr"),
    )
    thr = float(st.session_state["w_thr"])
    return kind, av.feature_scores(scores, kind.source, kind.explainer, kind.scorer), thr
