"""Blind labeling: features sampled evenly across density buckets, density hidden until judged."""

import streamlit as st

from backend import labels
from backend.density import density_bucket, log10_density
from backend.errors import UserError
from backend.explanations import against_verdicts as av
from backend.labels.queue import MODES, next_feature, still_eligible
from backend.store import queries
from ui import auto_scores, common, feature_view, labeling

common.setup("Label queue")
QUEUE_EXAMPLES = 12  # top examples shown, padded with empty rows: their number must not hint at density


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
    feats = queries.features(db, sae)
    try:
        current = labels.latest(labeling.labels_location(), labeling.db_name(db))
    except UserError as e:
        labeling.store_warning(e)
        return
    current = current[current["sae"] == sae] if not current.empty else current
    disputed = _disputed(db, sae, current) if mode == "disagreements" else None
    f = common.int_param("qf", 0, queries.sae_row(db, sae).d_sae - 1)
    saved_key = f"_queue_saved_{sae}_{f}"
    if (
        f is not None
        and not st.session_state.get(saved_key)
        and not still_eligible(feats, current, me, mode, f, disputed)
    ):
        f = None  # the mode changed, or someone labeled it meanwhile: this one no longer belongs here
    if f is None:
        f = next_feature(feats, current, me, mode, step, disputed)
        if f is None:
            common.set_params(qf=None)
            st.success("Nothing left to label in this queue for this SAE.")
            return
        common.set_params(qf=f, step=step)
        saved_key = f"_queue_saved_{sae}_{f}"

    saved = st.session_state.get(saved_key)
    st.markdown(f"### Feature {f}" if saved else "### Next feature")
    st.caption(
        "Its id, density and number of examples stay hidden until you give a verdict, so they cannot sway you. "
        "Keys 1, 2, 3 choose a verdict."
    )

    def advance():
        common.set_params(qf=None, step=step + 1)

    if saved:
        row = queries.feature(db, sae, f)
        st.success(
            f"Saved “{st.session_state[saved_key]}”. Density was {row.density:.2e} "
            f"({density_bucket(log10_density(row.density))})."
        )
        st.button("Next →", on_click=advance, type="primary", key="next")
    else:
        verdict = labeling.verdict_form(db, sae, f, key=f"queue_{f}", who=me, shortcuts=True)
        if verdict:
            st.session_state[saved_key] = verdict
            st.rerun()
        st.button("Skip", on_click=advance, key="skip")
    feature_view.examples_panel(db, sae, f, n_top=QUEUE_EXAMPLES, quantiles=False, pad=not saved)
    if not saved:  # the verdict within reach after reading the examples
        verdict = labeling.verdict_buttons(db, sae, f, key=f"queue_{f}", who=me, suffix="_below")
        if verdict:
            st.session_state[saved_key] = verdict
            st.rerun()
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
