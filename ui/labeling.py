"""Labeling panels shared by pages: the one write gate, the verdict form, label status.

Every write to the labels store from the app (the verdict form on the Feature page and in the
queue, the import on the Interpretability page, any later one) asks `write_allowed` first.
Reading labels never needs the password; a broken labels store shows a message where labels
would be and leaves the rest of the page working.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from backend import labels
from backend.density import TOO_FEW_FIRINGS
from backend.errors import UserError
from backend.labels.access import Throttle
from backend.labels.joins import current_with_density as _current_with_density
from backend.store import queries
from ui import common
from ui.tokens import escape, md

_throttle = Throttle()
CONFIDENCE = {1: "low", 2: "medium", 3: "high"}


def labels_location() -> str:
    return labels.location()


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


def _client() -> str:
    """The client's address as the server sees it ("" on this machine, or without a browser)."""
    try:
        ip = st.context.ip_address
    except Exception:  # noqa: BLE001 - no client context
        return ""
    return ip if isinstance(ip, str) else ""  # None on this machine; AppTest gives a stand-in object


def write_allowed(key: str = "w_pw") -> bool:
    """The one check before any write to the labels store: open servers say so once per page
    view; with a password, this session must have given it (compared as UTF-8 bytes; wrong
    guesses throttled per server and client address, `access.Throttle`)."""
    pw = _password()
    if _may_write():
        if not pw and common.once_per_run("open-notice"):
            st.caption(
                "Labeling is open: anyone who can reach this server can label "
                "(set SAE_DASHBOARD_PASSWORD or `labels_password` in secrets.toml to require a password)."
            )
        return True
    given = st.text_input("Labeling password", type="password", key=key)
    if given and given == st.session_state.get(f"_{key}_wrong"):
        st.error("Wrong password.")  # a rerun of the page: the same wrong guess is not tried again
    elif given:
        answer = _throttle.attempt(given, pw, _client())
        if answer.ok:
            st.session_state["_labels_ok"] = pw
            return True
        if answer.wait:
            st.warning(f"Too many wrong passwords: this one was not checked. Try again in {math.ceil(answer.wait)} s.")
        else:
            st.session_state[f"_{key}_wrong"] = given
            st.error("Wrong password.")
    st.info("This server requires a password to change labels.")
    return False


def status_table(db_path: str, sae: str) -> pd.DataFrame:
    """Consensus label per feature; empty (with a warning shown once) if the store is unreadable."""
    try:
        return labels.feature_status(labels_location(), db_name(db_path), sae)
    except UserError as e:
        store_warning(e)
        return pd.DataFrame(columns=["feature", "n_labels", "label", "description"])


def store_warning(e: UserError) -> None:
    if common.once_per_run("store-warning"):
        st.warning(md(f"Labels are unavailable: {e}"))


def verdict_form(
    db_path: str,
    sae: str,
    feature: int,
    key: str,
    who: str | None,
    shortcuts: bool = False,
    suggestion: str | None = None,
) -> str | None:
    """One click per verdict (keys 1, 2, 3 with `shortcuts`), optional description and
    confidence; `suggestion` (an imported explanation) starts the description box. Returns the
    verdict the click that started this run saved (see verdict_buttons); a failed save says why
    and keeps what was typed."""
    if not who:
        st.info("Enter your name in the sidebar to label.")
        return None
    if not write_allowed():
        return None
    if suggestion and f"{key}_desc" not in st.session_state:
        st.session_state[f"{key}_desc"] = suggestion[:2000]
    st.text_input(
        "Description (optional)",
        key=f"{key}_desc",
        max_chars=2000,
        placeholder="e.g. fires on closing brackets in code",
    )
    st.segmented_control("Confidence", [1, 2, 3], key=f"{key}_conf", format_func=CONFIDENCE.get)
    return verdict_buttons(db_path, sae, feature, key, who, shortcuts=shortcuts)


def verdict_buttons(
    db_path: str,
    sae: str,
    feature: int,
    key: str,
    who: str,
    suffix: str = "",
    shortcuts: bool = False,
) -> str | None:
    """The three verdict buttons, saving with the description and confidence of `verdict_form`
    under the same key; `suffix` places a second row of them (below long examples). A click saves
    in the button's callback, before the page's script runs, so the page draws the saved state in
    that one run (saving inside the script and then rerunning drew every verdict's page twice).
    Returns the verdict the click saved, as `just_saved` does (a page that must know it before
    drawing the buttons asks `just_saved` itself)."""
    saved = just_saved(key)
    cols = st.columns(3)
    for i, (col, verdict) in enumerate(zip(cols, labels.VERDICTS), start=1):
        # with a shortcut, Streamlit shows its key on the button itself
        col.button(
            verdict,
            key=f"{key}_{verdict}{suffix}",
            use_container_width=True,
            shortcut=str(i) if shortcuts else None,
            on_click=_clicked,
            args=(db_path, sae, feature, key, who, verdict),
        )
    return saved


def just_saved(key: str) -> str | None:
    """The verdict the click that started this run saved under `key`; once, then None."""
    return st.session_state.pop(f"{key}_saved", None)


def _clicked(db_path: str, sae: str, feature: int, key: str, who: str, verdict: str) -> None:
    if _save(db_path, sae, feature, key, who, verdict):
        st.session_state[f"{key}_saved"] = verdict


def _may_write() -> bool:
    """Whether this session may write now, drawing nothing: write_allowed asks it first, and a
    button's callback asks only it (a callback cannot show the password box)."""
    pw = _password()
    return not pw or st.session_state.get("_labels_ok") == pw


def _save(db_path: str, sae: str, feature: int, key: str, who: str, verdict: str) -> str | None:
    if not _may_write():  # every write path asks, even a second row of buttons
        return None
    desc, conf = st.session_state.get(f"{key}_desc"), st.session_state.get(f"{key}_conf")
    try:
        labels.add(
            labels_location(),
            labels.Label(
                db=db_name(db_path),
                run_id=queries.sae_row(db_path, sae).run_id,
                sae=sae,
                feature=feature,
                verdict=verdict,
                labeler=who,
                description=desc or None,
                confidence=conf,
            ),
        )
    except UserError as e:
        st.error(md(f"Not saved: {e}"))
        return None
    st.session_state.pop(f"{key}_desc", None)
    st.session_state.pop(f"{key}_conf", None)
    return verdict


def history_panel(db_path: str, sae: str, feature: int) -> None:
    try:
        hist = labels.history(labels_location(), db_name(db_path), sae, feature)
    except UserError as e:
        store_warning(e)
        return
    if hist.empty:
        st.caption("No labels yet.")
        return
    rows = "".join(
        f"<tr><td>{escape(r.created_at)}</td><td>{escape(r.labeler)}</td><td>{escape(r.verdict)}</td>"
        f"<td>{escape(CONFIDENCE.get(r.confidence, ''))}</td><td>{escape(r.description)}</td></tr>"
        for r in hist.itertuples()
    )
    st.html(
        f"<table class='labels'><tr><th>when (UTC)</th><th>who</th><th>verdict</th><th>confidence</th>"
        f"<th>description</th></tr>{rows}</table>"
    )


def current_with_density(db_path: str) -> pd.DataFrame:
    """Latest labels of this database joined with each feature's density (empty if unreadable)."""
    try:
        return _current_with_density(labels_location(), db_path)
    except UserError as e:
        store_warning(e)
        return pd.DataFrame(columns=[*labels.COLUMNS, "density", "log10_density"])


def overview_panel(db_path: str) -> None:
    from ui import figures

    st.subheader("Interpretability by feature density")
    cur = current_with_density(db_path)
    if cur.empty:
        st.caption("No labels yet: the Label queue page samples features across density buckets for judging.")
        st.page_link(common.QUEUE, label="Open the label queue →", query_params=common.link_params())
        return
    table = labels.interpretability_by_bucket(cur[cur["count"].fillna(0) >= TOO_FEW_FIRINGS])
    common.chart(figures.interpretability_chart(table), key="interp_overview")
    st.caption(
        f"{int(table['n'].sum())} features with a majority verdict ({len(cur)} current verdicts from "
        f"{cur['labeler'].nunique()} labeler(s)); 'unsure' abstains, ties are left out, and so are features that "
        f"fired fewer than {TOO_FEW_FIRINGS} times (too few to judge); bars are 95% Wilson intervals."
    )
