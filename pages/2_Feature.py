"""One feature: where its density sits, its activations, examples, token effects, neighbours, labels."""

import random

import streamlit as st

from backend.density import density_bucket, log10_density
from backend.store import feature_lists, queries
from ui import common, feature_view, figures, labeling, live
from ui.feature_list import PARAMS, FeatureList, opened_from_list
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
    _navigation(db, sae, f, n)

    explained, problem = feature_view.imported_explanations(db, sae, f)
    with st.sidebar:  # the verdict within the first screen, the evidence left whole
        st.markdown(f"**Your verdict on feature {f}**")
        saved = labeling.verdict_form(
            db, sae, f, key="feat_label", who=who, suggestion=feature_view.best_text(explained)
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

    feature_view.position_panel(db, row_sae, f)
    feature_view.examples_panel(db, sae, f)
    c3, c4 = st.columns(2)
    with c3:
        feature_view.effects_panel(db, sae, f)
    with c4:
        feature_view.neighbours_panel(db, sae, f)

    live.try_text_panel(db, sae, f, row)
    live.steer_panel(db, sae, f, row)

    st.subheader("Label")
    feature_view.explanations_panel(explained, problem)
    labeling.history_panel(db, sae, f)


def _navigation(db: str, sae: str, f: int, n: int) -> None:
    """Previous / next: through the Layer list this page was opened from (its filter, range,
    firing threshold and sort travel in the URL), else by feature id; "back" returns to the list."""
    nav = st.columns([1, 1, 1, 2, 3])
    if opened_from_list():
        listed = FeatureList.from_url()
        at, before, after, total = feature_lists.around(db, sae, listed.spec(), f)
        steps = ((nav[0], "← previous", before), (nav[1], "next →", after))
        where = f"{at + 1:,} of {total:,}" if at is not None else f"not among the {total:,}"
        nav[4].caption(md(f"Feature {where} in the list: {listed.describe()}"))
        page_no = at // listed.rows + 1 if at is not None else None
        back = common.link_params(sae=sae, **listed.params(), page=page_no if page_no and page_no > 1 else None)
        nav[3].page_link(common.LAYER, label="← back to the list", query_params=back)
    else:
        steps = ((nav[0], "← previous", (f - 1) % n), (nav[1], "next →", (f + 1) % n))
        nav[3].page_link(common.LAYER, label="layer page", query_params=common.link_params(sae=sae))
    # each step in the button's callback: the page draws once per click, not twice (0.5 s in a browser)
    for col, label, target in steps:
        col.button(
            label, key=f"nav_{label}", disabled=target is None, on_click=common.set_params, kwargs={"feature": target}
        )
    nav[2].button("random", key="nav_random", on_click=_random, args=(n,))


def _random(n: int) -> None:
    common.set_params(feature=random.randrange(n), list=None, **dict.fromkeys(PARAMS))


feature()
