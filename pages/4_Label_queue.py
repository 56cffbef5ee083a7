"""Blind labeling: features sampled evenly across density buckets, density hidden until judged."""

import math

import streamlit as st

from backend import labels, queries, render
from backend.errors import UserError
from ui import common, feature_view, labeling

common.setup("Label queue")
MODES = {"unlabeled": "only features nobody labeled", "agreement": "features others labeled, not yet by me"}


def next_item(db: str, sae: str, me: str, mode: str, step: int) -> int | None:
    """Round-robin over density buckets; a seeded random feature inside the chosen bucket."""
    feats = queries.features(db, sae)
    live = feats[feats["count"] > 0].assign(bucket=lambda d: d["log10_density"].map(render.density_bucket))
    cur = labels.latest(labeling.labels_path(), labeling.db_name(db))
    cur = cur[cur["sae"] == sae] if not cur.empty else cur
    if mode == "unlabeled":
        done = set(cur["feature"]) if not cur.empty else set()
        pool = live[~live["feature"].isin(done)]
    else:
        others = set(cur[cur["labeler"] != me]["feature"]) if not cur.empty else set()
        mine = set(cur[cur["labeler"] == me]["feature"]) if not cur.empty else set()
        pool = live[live["feature"].isin(others - mine)]
    buckets = [b for b in render.bucket_order() if b in set(pool["bucket"])]
    if not buckets:
        return None
    bucket = buckets[step % len(buckets)]
    return int(pool[pool["bucket"] == bucket].sample(1, random_state=step)["feature"].iloc[0])


@common.page
def queue() -> None:
    db = common.database()
    me = common.labeler()
    sae = common.choose_sae(db)
    common.copy_link()
    st.title("Label queue")
    mode = common.param("mode") or "unlabeled"
    if mode not in MODES:
        raise UserError(f"URL parameter mode={mode!r}: use {' or '.join(MODES)}")
    common.seed("w_mode", "mode", mode)
    st.radio(
        "Queue",
        list(MODES),
        key="w_mode",
        format_func=MODES.get,
        horizontal=True,
        on_change=common.to_url,
        args=("w_mode", "mode"),
    )
    if not me:
        st.info("Enter your name in the sidebar to start labeling.")
        return
    if not labeling.may_label():
        return
    step = common.int_param("step", 0) or 0
    f = common.int_param("qf", 0, int(queries.sae_row(db, sae)["d_sae"]) - 1)
    if f is None:
        f = next_item(db, sae, me, st.session_state["w_mode"], step)
        if f is None:
            st.success("Nothing left to label in this queue for this SAE. 🎉")
            return
        common.set_params(qf=f, step=step)

    st.markdown(f"### Feature {f}")
    st.caption("Density is hidden until you give a verdict, so it cannot sway you.")
    saved_key = f"_queue_saved_{sae}_{f}"

    def advance():
        common.set_params(qf=None, step=step + 1)

    if st.session_state.get(saved_key):
        row = queries.feature(db, sae, f)
        st.success(
            f"Saved “{st.session_state[saved_key]}”. Density was {row['density']:.2e} "
            f"({render.density_bucket(math.log10(row['density']) if row['density'] > 0 else None)})."
        )
        st.button("Next →", on_click=advance, type="primary", key="next")
    else:
        verdict = labeling.verdict_form(db, sae, f, key=f"queue_{f}")
        if verdict:
            st.session_state[saved_key] = verdict
            st.rerun()
        st.button("Skip", on_click=advance, key="skip")
    feature_view.examples_panel(db, sae, f, n_top=12)
    feature_view.effects_panel(db, sae, f)


queue()
