"""Labeling panels shared by pages: the verdict form, label status, access control."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from backend import labels, queries, render
from ui import common


def labels_path() -> str:
    return str(queries.data_dir() / queries.LABELS_DB_NAME)


def db_name(db_path: str) -> str:
    return Path(db_path).name


def _password() -> str | None:
    pw = os.environ.get("SAE_DASHBOARD_PASSWORD")
    if pw:
        return pw
    try:
        return st.secrets.get("labels_password")
    except Exception:  # noqa: BLE001 - no secrets file is the common, open case
        return None


def may_label() -> bool:
    """True when labeling is open, or this session gave the shared password."""
    pw = _password()
    if not pw:
        st.caption(
            "🔓 Labeling is open: anyone who can reach this server can label "
            "(set SAE_DASHBOARD_PASSWORD or `labels_password` in secrets.toml to require a password)."
        )
        return True
    if st.session_state.get("_labels_ok"):
        return True
    given = st.text_input("Labeling password", type="password", key="w_pw")
    if given and hmac.compare_digest(given, pw):
        st.session_state["_labels_ok"] = True
        return True
    if given:
        st.error("Wrong password.")
    st.info("🔒 This server requires a password to label.")
    return False


def status_table(db_path: str, sae: str) -> pd.DataFrame:
    return labels.feature_status(labels_path(), db_name(db_path), sae)


def verdict_form(db_path: str, sae: str, feature: int, key: str, on_saved=None) -> str | None:
    """One click per verdict, optional description and confidence. Returns the verdict saved."""
    who = common.param("labeler")
    if not who:
        st.info("Enter your name in the sidebar to label.")
        return None
    if not may_label():
        return None
    run_id = queries.sae_row(db_path, sae)["run_id"]
    desc = st.text_input(
        "Description (optional)",
        key=f"{key}_desc",
        max_chars=2000,
        placeholder="e.g. fires on closing brackets in code",
    )
    conf = st.segmented_control(
        "Confidence", [1, 2, 3], key=f"{key}_conf", format_func={1: "low", 2: "medium", 3: "high"}.get
    )
    cols = st.columns(3)
    for col, verdict, icon in zip(cols, labels.VERDICTS, ("✅", "❌", "🤷")):
        if col.button(f"{icon} {verdict}", key=f"{key}_{verdict}", use_container_width=True):
            labels.add(
                labels_path(),
                labels.Label(
                    db=db_name(db_path),
                    run_id=run_id,
                    sae=sae,
                    feature=feature,
                    verdict=verdict,
                    labeler=who,
                    description=desc or None,
                    confidence=conf,
                ),
            )
            st.session_state.pop(f"{key}_desc", None)
            st.session_state.pop(f"{key}_conf", None)
            if on_saved:
                on_saved(verdict)
            return verdict
    return None


def history_panel(db_path: str, sae: str, feature: int) -> None:
    hist = labels.history(labels_path(), db_name(db_path), sae, feature)
    if hist.empty:
        st.caption("No labels yet.")
        return
    rows = "".join(
        f"<tr><td>{render.escape(r.created_at)}</td><td>{render.escape(r.labeler)}</td><td>{render.escape(r.verdict)}</td>"
        f"<td>{render.escape({1: 'low', 2: 'medium', 3: 'high'}.get(r.confidence, ''))}</td>"
        f"<td>{render.escape(r.description)}</td></tr>"
        for r in hist.itertuples()
    )
    st.html(
        f"<table class='labels'><tr><th>when (UTC)</th><th>who</th><th>verdict</th><th>confidence</th>"
        f"<th>description</th></tr>{rows}</table>"
    )


def current_with_density(db_path: str) -> pd.DataFrame:
    """Latest labels of this database joined with each feature's density."""
    cur = labels.latest(labels_path(), db_name(db_path))
    if cur.empty:
        return cur.assign(log10_density=pd.Series(dtype=float))
    known = set(queries.saes(db_path)["sae"])
    cur = cur[cur["sae"].isin(known)]
    parts = []
    for sae, g in cur.groupby("sae"):
        f = queries.features(db_path, sae)[["feature", "density", "log10_density"]]
        parts.append(g.merge(f, on="feature", how="left"))
    return pd.concat(parts) if parts else cur.assign(log10_density=pd.Series(dtype=float))


def overview_panel(db_path: str) -> None:
    st.subheader("Interpretability by feature density")
    cur = current_with_density(db_path)
    if cur.empty:
        st.caption("No labels yet: the Label queue page samples features across density buckets for judging.")
        st.page_link(common.QUEUE, label="Open the label queue →", query_params=common.link_params())
        return
    table = labels.interpretability_by_bucket(cur, render.density_bucket)
    st.plotly_chart(render.interpretability_chart(table), key="interp_overview")
    st.caption(
        f"{len(cur)} current verdicts from {cur['labeler'].nunique()} labeler(s); 'unsure' is left out; "
        "bars are 95% Wilson intervals."
    )
