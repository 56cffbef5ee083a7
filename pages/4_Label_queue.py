"""Blind labeling: features sampled evenly across density buckets, density hidden until judged."""

import secrets

import streamlit as st

from backend import labels
from backend.density import TOO_FEW_FIRINGS, density_bucket, log10_density
from backend.errors import UserError
from backend.explanations import against_verdicts as av
from backend.labels.queue import MODES, next_feature, still_eligible
from backend.store import queries
from ui import auto_scores, common, feature_view, labeling

common.setup("Label queue")
# top examples every queued feature shows: no fewer exist for any of them (the queue leaves out
# features that fired fewer times), so their number never hints at density
QUEUE_EXAMPLES = TOO_FEW_FIRINGS


@common.page
def queue() -> None:
    db = common.database()
    me = common.labeler()
    sae = common.choose_sae(db)
    common.copy_link()
    st.title("Label queue")
    mode = common.choice("mode", MODES, "Queue", "unlabeled")
    if not me:
        st.info("Enter your name in the sidebar to start labeling.")
        return
    if not labeling.write_allowed():
        return
    step = common.int_param("step", 0) or 0
    feats = queries.densities(db, sae)
    try:
        current = labels.latest(labeling.labels_location(), labeling.db_name(db))
    except UserError as e:
        labeling.store_warning(e)
        return
    current = current[current["sae"] == sae] if not current.empty else current
    disputed = _disputed(db, sae, current) if mode == "disagreements" else None
    common.set_params(qf=None)  # links of earlier versions named the feature: never read, never kept
    # the feature on screen lives in this session only: nothing that names it (URL, widget keys,
    # the DOM) exists before the verdict; a reload serves the same step again
    slot = f"_queue_{labeling.db_name(db)}_{sae}_{mode}_{step}"
    held = st.session_state.get(slot)
    if held and not held["saved"]:  # a verdict's click saved it in its callback, before this run
        held["saved"] = labeling.just_saved(f"queue_{held['token']}")
    f = held["feature"] if held else None
    if f is not None and not held["saved"] and not still_eligible(feats, current, me, mode, f, disputed):
        f = None  # the mode changed, or someone labeled it meanwhile: this one no longer belongs here
    if f is None:
        f = next_feature(feats, current, me, mode, step, disputed)
        if f is None:
            st.success("Nothing left to label in this queue for this SAE.")
            return
        held = st.session_state[slot] = {"feature": f, "token": secrets.token_hex(6), "saved": None}
    key = f"queue_{held['token']}"

    saved = held["saved"]
    st.markdown(f"### Feature {f}" if saved else "### Next feature")
    few = int(((feats["count"] > 0) & (feats["count"] < TOO_FEW_FIRINGS)).sum())
    st.caption(
        "Its id, density and number of examples stay hidden until you give a verdict, so they cannot sway you: "
        "every feature here shows the same number of top examples. Keys 1, 2, 3 choose a verdict."
        + (
            f" {few:,} features fired fewer than {TOO_FEW_FIRINGS} times: too few firings to judge, not queued."
            if few
            else ""
        )
    )

    def advance():
        common.set_params(step=step + 1)

    if saved:
        row = queries.feature(db, sae, f)
        st.success(f"Saved “{saved}”. Density was {row.density:.2e} ({density_bucket(log10_density(row.density))}).")
        st.page_link(common.FEATURE, label=f"Open feature {f}", query_params=common.link_params(sae=sae, feature=f))
        st.button("Next →", on_click=advance, type="primary", key="next")
    else:
        labeling.verdict_form(db, sae, f, key=key, who=me, shortcuts=True)
        st.button("Skip", on_click=advance, key="skip")
    # QUEUE_EXAMPLES, or the run's --n-top if smaller: the same number for every queued feature
    feature_view.examples_panel(db, sae, f, n_top=QUEUE_EXAMPLES, quantiles=False, exact=True)
    if not saved:  # the verdict within reach after reading the examples
        labeling.verdict_buttons(db, sae, f, key=key, who=me, suffix="_below")
    feature_view.effects_panel(db, sae, f)


def _disputed(db: str, sae: str, current) -> set[int]:
    """Features whose automatic score (the URL's `score` and `thr`, or the first scorer and the
    default threshold) disagrees with the team's verdict; chosen in the sidebar, never shown
    beside a feature, so the queue stays blind to the score."""
    scores = auto_scores.scores_of(db, sae)
    got = None if scores is None else auto_scores.choose(scores, container=st.sidebar)
    if got is None:
        st.info("No imported scores for this SAE: the queue serves unlabeled features.")
        return set()
    _, fscores, thr = got
    return set(av.disagreements(current, fscores, thr)["feature"])


queue()
