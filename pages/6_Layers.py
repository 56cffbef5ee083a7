"""Across layers: how each SAE's error travels through the model, and how each SAE reconstructs
inside and past the context it was trained on."""

import numpy as np
import streamlit as st

from backend.store import queries
from ui import common, figures

common.setup("Layers")

METRICS = {"ev": "explained variance", "rel": "relative error"}
SPREAD = {"resid": "residual change", "ev_drop": "EV drop of the later SAE", "output": "model output"}
HARM = {"ce_loss": "CE loss increase (nats / token)", "cosine": "1 − cosine to the clean embedding"}


@common.page
def layers() -> None:
    db = common.database()
    common.copy_link()
    st.title("Across layers")
    saes = queries.saes(db)
    if saes.empty:
        st.info("This database has no complete SAE yet.")
        return
    propagation(db, saes)
    context(saes)
    st.subheader("Error by token position")
    st.plotly_chart(figures.position_error(queries.position_error(db), saes), key="pos")
    st.caption("The dashed vertical line is where the SAEs' training context ends.")


def propagation(db: str, saes) -> None:
    st.subheader("How an SAE's error travels through the model")
    prop = queries.propagation(db)
    if prop.empty:
        st.info(
            "This run has no splice sample, so error propagation was not measured: precompute again with "
            "--splice-seqs N (N > 0)."
        )
        return
    which = common.choice("spread", SPREAD, "Heatmap of", "resid")
    links = {s: common.url("Layer", sae=s) for s in saes["sae"]}
    out = queries.splice_output(db)
    harm = HARM[out["metric"].iloc[0]] if not out.empty else "output harm"
    n_tok, n_seq = int(prop["n_tokens"].max()), prop["splice_seqs"].max()
    sample = f"on the splice sample: {n_tok:,} tokens of the sequences numbered below {n_seq} (--splice-seqs)"
    if which == "resid":
        df, col, fmt, bar = prop, "resid_change", ".3f", "Σ‖x′ − x‖² / Σ‖x‖²"
        text = (
            "Each row splices one SAE's reconstruction into the model at its hook; each cell is how far the "
            "residual stream then moves at a later hook, Σ‖x′ − x‖² / Σ‖x‖² (0: not at all). On the diagonal that is "
            "the SAE's own relative error. Blank: hooks before the spliced one, where a splice cannot act."
        )
        if (prop["hook"] == prop["spliced_hook"]).all():
            text += " No SAE of this run has another hook with an SAE deeper than its own, so only the diagonal exists."
    elif which == "ev_drop":
        df, col, fmt, bar = queries.propagation_recon(db), "ev_drop", ".3f", "EV clean − EV spliced"
        df = df.assign(
            detail=[
                f"{t}: EV {a:.3f} clean, {b:.3f} spliced"
                for t, a, b in zip(df["target"], df["ev_clean"], df["ev_spliced"])
            ]
        )
        text = (
            "Each cell is how much explained variance the SAE of the same family at the later hook loses when it "
            "reads the stream with the row's SAE spliced in, next to the clean stream on the same tokens (both EVs "
            "under 'The numbers'). Blank: no SAE of that family there, or the row's own hook."
        )
    else:
        df = out[out["mode"] == "alone"].assign(hook="output", depth=np.inf, spliced_depth=lambda d: d["depth"])
        col, fmt, bar = "harm", ".4f", harm
        text = (
            f"The model's output with the row's SAE alone spliced in: {harm}, against the clean model on the same "
            "sequences."
        )
    if df.empty:
        st.info("No cell of this heatmap applies here: no family has an SAE at a later hook than another.")
    else:
        # static: no drag layer over the values, so their links click (hover would need one)
        st.plotly_chart(
            figures.propagation_heatmap(df, col, links, fmt, bar), key="spread", config={"staticPlot": True}
        )
    st.caption(f"{text} Measured {sample}. Click a value to open the spliced SAE's layer page.")
    if not df.empty:
        with st.expander("The numbers"):
            st.dataframe(_numbers(df, which), hide_index=True)
    worst = _worst(prop)
    if worst:
        st.markdown(worst)

    st.subheader("Compounding: every SAE of a family up to a layer, spliced at once")
    chain = out[out["mode"] == "compound"]
    if chain.empty:
        st.info(
            "No family of this run has its SAEs at distinct depths, so there is no chain to splice "
            "(two SAEs of one family at one hook leave it undefined which to splice)."
        )
        return
    st.plotly_chart(figures.compounding(out, saes, harm), key="compound")
    st.caption(
        f"Solid: all SAEs of the family at hooks up to this one replace their activations together; dotted: this "
        f"hook's SAE alone. Where solid climbs above dotted, errors pile up with depth. {harm.capitalize()}, "
        f"{sample}."
    )


def _numbers(df, which: str):
    keep = {
        "resid": ["sae", "hook", "resid_change", "delta_sq", "clean_sq", "n_tokens"],
        "ev_drop": ["sae", "target", "ev_clean", "ev_spliced", "ev_drop", "rel_error_clean", "rel_error_spliced"],
        "output": ["sae", "metric", "clean", "spliced", "harm", "n"],
    }[which]
    return df[keep]


def _worst(prop) -> str | None:
    """Per family, the SAE whose splice moves the later hooks most (mean over those hooks)."""
    later = prop[prop["hook"] != prop["spliced_hook"]]
    if later.empty:
        return None
    parts = []
    for fam, g in later.groupby("architecture"):
        mean = g.groupby(["sae", "spliced_hook"])["resid_change"].mean().sort_values(ascending=False)
        (sae, hook), v = mean.index[0], mean.iloc[0]
        parts.append(
            f"**{fam}**: splicing `{sae}` ({figures.short_hook(hook)}) moves later hooks most, {v:.3f} on average"
        )
    return "Which SAE hurts later layers most: " + "; ".join(parts) + "."


def context(saes) -> None:
    st.subheader("Reconstruction inside and beyond the training context")
    known = saes[saes["train_context"].notna()]
    if known.empty:
        st.info(
            "No SAE in this database records the context length it was trained on, so inside and beyond cannot be "
            "told apart: precompute again with --sae-context N (sae_lens configs that carry cfg.metadata.context_size "
            "need nothing)."
        )
        return
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


def _contexts(df) -> str:
    values = sorted({int(c) for c in df["train_context"]})
    return ", ".join(f"{c} tokens" for c in values)


layers()
