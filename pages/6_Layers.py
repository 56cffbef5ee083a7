"""Across layers: how each SAE reconstructs inside and past the context it was trained on."""

import streamlit as st

from backend.store import queries
from ui import common, figures

common.setup("Layers")

METRICS = {"ev": "explained variance", "rel": "relative error"}


@common.page
def layers() -> None:
    db = common.database()
    common.copy_link()
    st.title("Across layers")
    saes = queries.saes(db)
    if saes.empty:
        st.info("This database has no complete SAE yet.")
        return
    st.subheader("Reconstruction inside and beyond the training context")
    known = saes[saes["train_context"].notna()]
    if known.empty:
        st.info(
            "No SAE in this database records the context length it was trained on, so inside and beyond cannot be "
            "told apart: precompute again with --sae-context N (sae_lens configs that carry cfg.metadata.context_size "
            "need nothing)."
        )
    else:
        metric = common.choice("metric", METRICS, "Show", "ev")
        st.plotly_chart(figures.context_ev(known, metric), key="context_ev")
        beyond = known["ev_beyond"].notna().sum()
        n_tok = int(saes["n_tokens"].max())
        st.caption(
            f"Solid: token positions before the SAE's training context ends ({_contexts(known)}); dashed: positions "
            f"at or past it, which no training sequence was long enough to reach. Measured on the tokens whose "
            f"reconstruction was sampled (up to {int(saes['recon_tokens'].max()):,} of {n_tok:,} per SAE). "
            + (
                ""
                if beyond
                else "This run never read past the training context (its --context-len is not longer), so there is "
                "no dashed line."
            )
        )
    st.subheader("Error by token position")
    st.plotly_chart(figures.position_error(queries.position_error(db), saes), key="pos")
    st.caption("The dashed vertical line is where the SAEs' training context ends.")


def _contexts(df) -> str:
    values = sorted({int(c) for c in df["train_context"]})
    return ", ".join(f"{c} tokens" for c in values)


layers()
