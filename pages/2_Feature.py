"""One feature: where its density sits, its activations, examples, token effects, neighbours, labels."""

import random

import streamlit as st

from backend.density import density_bucket, log10_density
from backend.store import queries
from ui import common, feature_view, figures, labeling, live
from ui.tokens import escape, md

common.setup("Feature")


@common.page
def feature() -> None:
    db = common.database()
    who = common.labeler()
    sae = common.choose_sae(db)
    common.copy_link()
    row_sae = queries.sae_row(db, sae)
    n = row_sae.d_sae
    f = common.int_param("feature", 0, n - 1)
    if f is None:
        f = 0
        common.set_params(feature=0)
    row = queries.feature(db, sae, f)

    st.title(md(f"Feature {f} · {sae}"))
    nav = st.columns([1, 1, 1, 1, 4])
    for col, label, target in (
        (nav[0], "← previous", (f - 1) % n),
        (nav[1], "next →", (f + 1) % n),
        (nav[2], "random", None),
    ):
        if col.button(label, key=f"nav_{label}"):
            common.set_params(feature=target if target is not None else random.randrange(n))
            st.rerun()
    nav[3].page_link(common.LAYER, label="layer page", query_params=common.link_params(sae=sae))

    with st.sidebar:  # the verdict within the first screen, the evidence left whole
        st.markdown(f"**Your verdict on feature {f}**")
        saved = labeling.verdict_form(
            db, sae, f, key="feat_label", who=who, suggestion=feature_view.best_explanation(db, sae, f)
        )
        if saved:
            st.success(f"Saved: {saved}")

    status = labeling.status_table(db, sae)
    mine = status[status["feature"] == f]
    if len(mine):
        r = mine.iloc[0]
        st.html(
            f"<p><b>Label:</b> {escape(r['label'])} ({int(r['n_labels'])} labeler(s))"
            + (f" — “{escape(r['description'])}”" if r["description"] else "")
            + "</p>"
        )

    st.dataframe(feature_view.summary(row, n), hide_index=True)
    c1, c2 = st.columns(2)
    with c1:
        bucket = density_bucket(log10_density(row.density))
        st.markdown(f"**Density in its layer** · {bucket}")
        feature_view.density_panel(db, sae, row)
    with c2:
        st.markdown("**Activation histogram** (nonzero activations, log-spaced bins)")
        fig = figures.activation_histogram(row.hist, row_sae.hist_lo, row_sae.hist_hi)
        if fig is None:
            st.caption(f"This feature never fired on the {row_sae.n_tokens:,} tokens read: no activations.")
        else:
            common.chart(fig, key="act_hist")

    feature_view.examples_panel(db, sae, f)
    c3, c4 = st.columns(2)
    with c3:
        feature_view.effects_panel(db, sae, f)
    with c4:
        feature_view.neighbours_panel(db, sae, f)

    live.try_text_panel(db, sae, f, row)
    live.steer_panel(db, sae, f, row)

    st.subheader("Label")
    feature_view.explanations_panel(db, sae, f)
    labeling.history_panel(db, sae, f)


feature()
