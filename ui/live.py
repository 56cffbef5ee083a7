"""The live model in the app: loaded once per server process and shared by every session
(`st.cache_resource`), and the Feature page's "try your own text" and steering panels. A model
or SAE that cannot be loaded here is a warning in these panels; the rest of the page works.

The live model's modules (and torch with them, 1-2 s to import) are imported by the panels
when someone first types into them: the Feature page is read far more often than it is probed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from backend.errors import UserError
from backend.labels.joins import with_labels
from backend.loss_names import METRIC, UNIT
from backend.store import queries
from ui import common, figures, labeling
from ui.feature_view import CSS
from ui.tokens import md, tokens_html

if TYPE_CHECKING:
    from backend.live.model import Live

MAX_TEXT_CHARS = 6000
"""what a text box takes (the token limit is checked after tokenizing)"""


@st.cache_resource(show_spinner="Loading the model and SAEs (once per server)...", max_entries=4)
def _live(db: str, run_id: str, mtime: float) -> Live:
    from backend.live.model import load_live

    return load_live(db, run_id)


def live_for(db: str, sae: str) -> Live:
    run_id = queries.sae_row(db, sae).run_id
    return _live(db, run_id, os.path.getmtime(db))


def text_box(name: str, label: str, placeholder: str, height: int = 100) -> str | None:
    """A text area bound to the URL parameter `name`."""
    key = f"w_{name}"
    common.seed(key, name, common.param(name) or "")
    st.text_area(
        label,
        key=key,
        height=height,
        max_chars=MAX_TEXT_CHARS,
        placeholder=placeholder,
        on_change=common.to_url,
        args=(key, name),
    )
    return (st.session_state[key] or "").strip() or None


def shaded(tokens, acts, counted, scale: float) -> None:
    st.html(CSS + tokens_html(tokens, acts, scale, counted=counted))


def try_text_panel(db: str, sae: str, f: int, row: dict) -> None:
    """Feature page: this feature's activation on text the user writes."""
    st.subheader("Try your own text")
    text = text_box("probe", "Text", "Does this feature fire where you expect? Type a sentence and press Ctrl+Enter.")
    if not text:
        return
    from backend.live.probe import probe

    try:
        p = probe(live_for(db, sae), text)
    except UserError as e:
        st.warning(md(e))
        return
    acts = p.codes[sae].feature_acts(f, len(p.tokens))
    stored = float(row.max_act)
    shaded(p.tokens, acts, p.counted, stored if stored > 0 else float(acts.max()))
    st.caption(
        f"Max on your text {acts.max():.3g} on {int((acts > 0).sum())} of {int(p.counted.sum())} counted tokens; "
        f"the stored max over the corpus is {stored:.3g} (shading is relative to it). Hover a token for its value."
    )


STRENGTH_HELP = "multiples of the feature's max activation on the corpus; negative pushes against it"


def steer_panel(db: str, sae: str, f: int, row: dict) -> None:
    """Feature page: add strength x max_act x W_dec[f] at the SAE's hook and compare."""
    st.subheader("Steer along this feature")
    stored = stored_sweep(db, sae, f)
    if stored:
        st.markdown(stored)
    prompt = text_box("prompt", "Prompt", "A prompt (causal models) or a sentence (encoders) to steer.", height=80)
    try:
        strength = common.float_param("strength")
    except UserError as e:
        st.warning(md(e))
        return
    strength = 4.0 if strength is None else strength
    common.seed("w_strength", "strength", strength)
    st.number_input(
        "Strength",
        key="w_strength",
        step=1.0,
        help=STRENGTH_HELP,
        on_change=common.to_url,
        args=("w_strength", "strength"),
    )
    strength = float(st.session_state["w_strength"])
    if not prompt:
        return
    try:
        live = live_for(db, sae)
        max_act = float(row.max_act)
        if live.adapter.kind == "causal":
            _steer_causal(db, live, prompt, sae, f, strength, max_act)
        else:
            _steer_encoder(db, live, prompt, sae, f, strength, max_act)
    except UserError as e:
        st.warning(md(e))


def _steer_causal(db, live, prompt, sae, f, strength, max_act) -> None:
    from backend.live import steer

    out = steer.generate(live, prompt, sae, f, strength, max_act)
    for mode, (plain, pushed) in out.items():
        st.markdown(f"**{mode}** continuation" + (" (sampled with seed 0)" if mode == "sampled" else ""))
        c1, c2 = st.columns(2)
        c1.caption("without steering")
        c1.code(plain, language=None, wrap_lines=True)
        c2.caption(f"steered at {strength:g} x max activation")
        c2.code(pushed, language=None, wrap_lines=True)
    st.markdown("**Next tokens that gain and lose the most probability**")
    shift = steer.next_token_shift(live, prompt, sae, f, strength, max_act)
    st.dataframe(shift, hide_index=True, column_config={"change": st.column_config.NumberColumn(format="%+.4f")})
    loss_panel(db, live, sae, f, strength, max_act)


def loss_panel(db, live, sae, f, strength, max_act) -> None:
    """The model's own loss on the splice sample against strength, with the stored sweep's figures."""
    from backend.live import steer

    tokens, seqs = steer.steering_sample(live, db, queries.sae_row(db, sae).run_id)
    curve = steer.loss_curve(live, tokens, seqs, sae, f, max_act)
    unit = UNIT[METRIC[live.adapter.kind]]
    common.chart(figures.strength_curve(curve, "loss", unit, strength), key="loss_curve")
    st.caption(
        f"The model's own loss ({unit}) on the run's splice sample ({len(seqs)} sequences of {tokens.shape[1]} tokens) "
        f"with the feature's direction added at every position, against strength; 0 is the unsteered model. At ±1 "
        "it is the stored sweep's measurement (above), recomputed live."
    )


def stored_sweep(db: str, sae: str, f: int) -> str | None:
    """One line: the precompute's steering sweep for this feature (engine.steering)."""
    stored = queries.steering_feature(db, sae, f)
    if stored is None or stored["estimate"] != stored["estimate"]:  # no sweep, or a dead feature (NaN)
        return None
    line = (
        f"**Steering sweep** (the model's loss on the splice sample, ± max activation): first-order estimate "
        f"{stored['estimate']:+.4f} at +1, {-stored['estimate']:+.4f} at −1"
    )
    if stored["exact_plus"] == stored["exact_plus"]:
        line += f"; measured {stored['exact_plus']:+.4f} at +1 and {stored['exact_minus']:+.4f} at −1"
    else:
        line += " (not among the features measured exactly)"
    return line + ". Below 0 the steering helps the model."


def _steer_encoder(db, live, prompt, sae, f, strength, max_act) -> None:
    from backend.live import steer

    curve = steer.embedding_curve(live, prompt, sae, f, max_act)
    common.chart(figures.strength_curve(curve, "cosine", "cosine to the unsteered embedding", strength), key="cos")
    st.caption(
        "How far the sentence embedding (mean-pooled last layer) moves when the feature's direction is added at "
        "every position of the text: cosine to the unsteered embedding, against strength."
    )
    index = steer.corpus_index(live, db, queries.sae_row(db, sae).run_id)
    near = steer.nearest(live, index, prompt, sae, f, strength, max_act)
    c1, c2 = st.columns(2)
    for col, name, title in (
        (c1, "plain", "Nearest corpus sequences, unsteered"),
        (c2, "steered", f"steered at {strength:g}"),
    ):
        col.markdown(f"**{title}**")
        col.dataframe(near[name], hide_index=True)
    st.caption(f"Among the run's first {len(index[1])} stored sequences, by cosine of their embeddings.")
    loss_panel(db, live, sae, f, strength, max_act)


def probe_table(db: str, sae: str, top: pd.DataFrame) -> pd.DataFrame:
    """The probe's top features with their stored density, label and a link to their page."""
    feats = queries.features(db, sae)[["feature", "density", "max_act"]].rename(columns={"max_act": "stored_max"})
    out = top.merge(feats, on="feature", how="left")
    status = labeling.status_table(db, sae)
    out = with_labels(out, status)
    out["label"] = out["label"].fillna("")
    out["open"] = common.feature_urls(sae, out["feature"])
    return out
