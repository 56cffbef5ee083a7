"""Find features whose top examples contain a token or a phrase."""

from pathlib import Path

import streamlit as st

from backend import labels
from backend.density import DENSE, is_dense
from backend.errors import UserError
from backend.explanations import store
from backend.store import queries
from ui import common, labeling
from ui.tokens import md

common.setup("Search")

SEARCH_IN = {"examples": "top examples", "explanations": "imported explanations"}


@common.page
def search() -> None:
    db = common.database()
    common.labeler()
    st.title("Search features")
    sae = common.choose_sae(db, key="w_search_sae", name="sae", label="Only in SAE", optional=True, container=st)
    common.seed("w_q", "q", common.param("q") or "")
    q = st.text_input(
        "Token or phrase",
        key="w_q",
        on_change=common.to_url,
        args=("w_q", "q", lambda v: v.strip() or None),
        placeholder="e.g. def, ), return the",
    )
    common.copy_link()
    where = common.choice("in", SEARCH_IN, "Search in", "examples")
    if where == "explanations":
        _explanations(db, q, sae)
        return
    if not q.strip():
        st.caption(
            "Matches the activating token exactly, or text anywhere in a top example's context (case-insensitive)."
        )
        return
    hits = queries.search(db, q, sae)
    st.markdown(f"**{len(hits)}** features" + (" (first 200)" if len(hits) == 200 else ""))
    n = queries.occurrences(db, q, sae)
    if n > queries.COMMON_PHRASE:
        st.caption(
            md(
                f"{q.strip()!r} occurs {n:,} times in the corpus: only top examples whose activating token it is are "
                f"counted. Anywhere in an example's context is searched for text found up to "
                f"{queries.COMMON_PHRASE:,} times; a longer phrase narrows it."
            )
        )
    # a new frame: `hits` is the cached result itself, shared by every session
    hits = hits.assign(
        open=[common.feature_url(s, f) for s, f in zip(hits["sae"], hits["feature"])], dense=is_dense(hits["density"])
    )
    hits = hits[["open", *[c for c in hits.columns if c != "open"]]]
    st.dataframe(
        hits,
        hide_index=True,
        column_config={
            "open": st.column_config.LinkColumn("", display_text="open"),
            "hits": st.column_config.NumberColumn("matching top examples"),
            "density": st.column_config.NumberColumn(format="%.2e"),
            "dense": st.column_config.CheckboxColumn(f"dense (>{DENSE:.0%})"),
        },
    )


def _explanations(db: str, q: str, sae: str | None) -> None:

    if not q.strip():
        st.caption(
            "Ranked full-text search (BM25, word stems) over explanations imported with `python -m backend "
            "explanations import`, then the team's own label descriptions; every word must match."
        )
        return
    try:
        hits = store.search(store.location(), Path(db).name, q, sae)
    except UserError as e:
        st.warning(md(e))
        hits = None
    if hits is not None:
        st.markdown(f"**{len(hits)}** imported explanations" + (" (first 200)" if len(hits) == 200 else ""))
        hits = hits.assign(open=[common.feature_url(s, f) for s, f in zip(hits["sae"], hits["feature"])])
        st.dataframe(
            hits[["open", "sae", "feature", "text", "source", "score"]],
            hide_index=True,
            column_config={"open": st.column_config.LinkColumn("", display_text="open")},
        )
    try:
        mine = labels.search_descriptions(labeling.labels_location(), Path(db).name, q, sae)
    except UserError as e:
        labeling.store_warning(e)
        return
    st.markdown(f"**{len(mine)}** of the team's label descriptions")
    mine = mine.assign(open=[common.feature_url(s, f) for s, f in zip(mine["sae"], mine["feature"])])
    st.dataframe(
        mine[["open", "sae", "feature", "text", "labeler", "verdict"]],
        hide_index=True,
        column_config={"open": st.column_config.LinkColumn("", display_text="open")},
    )


search()
