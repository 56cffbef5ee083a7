"""Probe: type text, see which features of every SAE fire on it, shade it by one of them."""

import pandas as pd
import streamlit as st

from backend.density import DENSE, is_dense
from backend.errors import UserError
from backend.live.probe import probe, top_features
from backend.store import queries
from ui import common, live
from ui.tokens import md

common.setup("Probe")

RANK = {"max": "max on the text", "sum": "sum over the text"}


@common.page
def probe_page() -> None:
    db = common.database()
    sae = common.choose_sae(db)
    common.copy_link()
    st.title("Probe: your own text")
    text = live.text_box("text", "Text", "Type or paste text (up to 512 tokens), then press Ctrl+Enter.", height=120)
    if not text:
        st.info(
            "The model runs once on your text with every SAE of this database; the features that fire most show here."
        )
        return
    by = common.choice("by", RANK, "Rank features by", "max")
    common.seed("w_dense", "dense", common.param("dense") == "1")
    st.toggle(
        f"Show dense features (density > {DENSE:.0%})",
        key="w_dense",
        on_change=common.to_url,
        args=("w_dense", "dense", lambda v: "1" if v else None),
    )
    try:
        p = probe(live.live_for(db, sae), text)
    except UserError as e:
        st.warning(md(e))
        return

    st.subheader(md(f"{sae}: the features that fire most"))
    feats = queries.densities(db, sae)
    dense = set() if st.session_state["w_dense"] else set(feats.loc[is_dense(feats["density"]), "feature"])
    top = live.probe_table(db, sae, top_features(p, sae, by, n=20, hide=dense))
    if top.empty:
        st.info("No feature of this SAE fires on the text" + (" (dense ones hidden)" if dense else "") + ".")
        return
    event = st.dataframe(
        top[["feature", "max", "sum", "tokens", "density", "stored_max", "label", "open"]],
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key="probe_table",
        column_config={
            "max": st.column_config.NumberColumn("max on text", format="%.3g"),
            "sum": st.column_config.NumberColumn("sum on text", format="%.3g"),
            "tokens": st.column_config.NumberColumn("tokens firing"),
            "density": st.column_config.NumberColumn("density", format="%.2e"),
            "stored_max": st.column_config.NumberColumn("corpus max", format="%.3g"),
            "open": st.column_config.LinkColumn("feature page", display_text="open"),
        },
    )
    rows = event.selection.rows if event and event.selection else []
    if rows and int(top.iloc[rows[0]]["feature"]) != common.int_param("feature"):
        common.set_params(feature=int(top.iloc[rows[0]]["feature"]))
    f = common.int_param("feature", 0, queries.sae_row(db, sae).d_sae - 1)
    f = int(top.iloc[0]["feature"]) if f is None else f
    st.caption(
        f"{len(p.tokens)} tokens, {int(p.counted.sum())} counted (special tokens are not). "
        + ("" if st.session_state["w_dense"] else f"{len(dense)} dense features hidden. ")
        + "Select a row to shade the text by that feature."
    )

    st.subheader(f"Feature {f}, token by token")
    acts = p.codes[sae].feature_acts(f, len(p.tokens))
    stored = queries.feature(db, sae, f).max_act
    live.shaded(p.tokens, acts, p.counted, stored if stored > 0 else float(acts.max() or 1))
    st.caption(f"Shading relative to the feature's max over the corpus ({stored:.3g}); hover a token for its value.")
    st.page_link(
        common.FEATURE,
        label=f"Steer along feature {f} with this text",
        query_params=common.link_params(sae=sae, feature=f, prompt=text[: common.MAX_PARAM_CHARS]),
    )

    st.subheader("Every SAE")
    show_dense = st.session_state["w_dense"]
    st.dataframe(_summary(db, p, by, show_dense), hide_index=True)
    if not show_dense:
        st.caption("Dense features are left out here too, as in the table above.")


def _summary(db: str, p, by: str, show_dense: bool):
    """Per SAE: how many features fire on the text and the top three, under the same rule for
    dense features as the table above."""
    rows = []
    for name in p.codes:
        feats = queries.densities(db, name)
        dense = set() if show_dense else set(feats.loc[is_dense(feats["density"]), "feature"])
        t = top_features(p, name, by, n=3, hide=dense)
        firing = p.codes[name].table()
        rows.append(
            {
                "sae": name,
                "features firing": int((~firing["feature"].isin(dense)).sum()) if len(firing) else 0,
                f"top 3 by {by}": ", ".join(f"{int(r.feature)} ({getattr(r, by):.3g})" for r in t.itertuples()),
            }
        )
    return pd.DataFrame(rows)


probe_page()
