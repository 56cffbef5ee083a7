"""Across layers: what each SAE does to the model's own loss (overall, by context length, against
random errors of the same size, and when its features steer), how its error travels through the
model, and how it reconstructs inside and past the context it was trained on. One part at a time
(`part=` in the URL): the whole page drew eight figures, 2.5 s in a browser before any was usable."""

import numpy as np
import streamlit as st

from backend.loss_names import UNIT
from backend.store import queries
from ui import claims, common, figures

common.setup("Layers")

METRICS = {"ev": "explained variance", "rel": "relative error"}
SPREAD = {"resid": "residual change", "ev_drop": "EV drop of the later SAE", "output": "model output"}
PARTS = {
    "loss": "The model's loss",
    "travel": "How errors travel",
    "steering": "Steering",
    "reconstruction": "Reconstruction by position",
}
PART_OF = {"spread": "travel", "steer_sae": "steering", "metric": "reconstruction"}  # a link with one opens its part
HARM = {"ce_loss": "CE loss increase (nats / token)", "contrastive_loss": "contrastive loss increase (nats / pair)"}


@common.page
def layers() -> None:
    db = common.database()
    common.copy_link()
    st.title("Across layers")
    saes = queries.saes(db)
    if saes.empty:
        st.info("This database has no complete SAE yet.")
        return
    default = next((part for name, part in PART_OF.items() if common.param(name) is not None), "loss")
    part = common.choice("part", PARTS, "Show", default, label_visibility="collapsed")
    if part == "loss":
        performance(db, saes)
    elif part == "travel":
        propagation(db, saes)
    elif part == "steering":
        steering(db)
    else:
        context(saes)
        st.subheader("Error by token position")
        common.chart(figures.position_error(queries.position_error(db), saes), key="pos")
        st.caption("The dashed vertical line is where the SAEs' training context ends.")


def performance(db: str, saes) -> None:
    st.subheader("The model's own loss with each SAE spliced in")
    df = queries.loss_per_sae(db)
    if df.empty or df["clean"].isna().all():
        st.info(
            "This run has no splice sample (or, for an encoder, not a single pair of sequences in it), so the model's "
            "loss was not measured: precompute again with --splice-seqs N (N > 1)."
        )
        return
    metric = df["metric"].iloc[0]
    unit = UNIT[metric]
    cols = ["sae", "clean", "increase", "recovered", "random_increase", "ratio"]
    if metric == "contrastive_loss":
        cols.append("cosine")
    st.dataframe(
        df[cols],
        hide_index=True,
        column_config={
            "sae": st.column_config.TextColumn("SAE"),
            "clean": st.column_config.NumberColumn("clean loss", format="%.4f"),
            "increase": st.column_config.NumberColumn("increase spliced", format="%+.4f"),
            "recovered": st.column_config.NumberColumn(
                "loss recovered", format="%.3f", help="(ablated − spliced) / (ablated − clean)"
            ),
            "random_increase": st.column_config.NumberColumn("increase, random error", format="%+.4f"),
            "ratio": st.column_config.NumberColumn(
                "ratio", format="%.2f", help="SAE error's increase / random's; blank where random errors lower the loss"
            ),
            "cosine": st.column_config.NumberColumn("cosine to clean", format="%.4f"),
        },
    )
    what = (
        "next-token cross-entropy over every predicted token of the sample"
        if metric == "ce_loss"
        else "the contrastive loss the sentence encoder was trained with (sentence-transformers' "
        "MultipleNegativesRankingLoss, scale 20) over the sample's pairs of adjacent windows (an even-numbered "
        "sequence is the anchor, the next one its positive, the other pairs' positives the negatives)"
    )
    st.caption(
        f"Loss: {what} ({unit}). Loss recovered: 1 keeps the clean loss, 0 is no better than zero-ablating the hook; "
        "above 1 the splice lowered the loss. Random error: the clean activation plus a random direction with the "
        "norm of the SAE's error at each token, averaged over "
        f"{int(df['draws'].max()) if df['draws'].notna().any() else 0} draws (--random-draws)."
    )
    if df["random_increase"].notna().any():
        common.chart(figures.loss_bars(df, unit), key="loss_bars")
        line = claims.pathological_claim(df)
        if line:
            st.markdown(line)

    st.subheader("Loss increase by context length")
    ctx = queries.splice_context(db)
    if ctx.empty:
        st.info("No context breakdown in this run (no splice sample).")
        return
    common.chart(figures.context_heatmap(ctx, unit), key="context_heat")
    how = (
        "columns are ranges of how many tokens a prediction sees (BOS included), from the same forwards"
        if metric == "ce_loss"
        else "columns are the pairs cut to texts of that many tokens ([CLS] and [SEP] included; an anchor keeps the "
        "end of its window, its positive the start, so a pair stays adjacent text), the last the run's own length"
    )
    st.caption(
        f"Each cell: the loss with the row's SAE alone spliced in, less the clean model's at that context ({unit}); "
        f"{how}. Outlined: the context the SAE was trained on."
    )
    for line in claims.context_claims(ctx):
        st.markdown(line)


def steering(db: str) -> None:
    st.subheader("Steering every feature: which hurt the model, which help")
    summary = queries.steering_summary(db)
    if summary.empty:
        st.info("This run has no steering sweep (precompute without --no-steering, with a splice sample).")
        return
    unit = UNIT[summary["metric"].iloc[0]]
    st.dataframe(
        summary[
            [
                "sae",
                "n_live",
                "n_sample",
                "hurt_plus",
                "hurt_minus",
                "hurt_both",
                "est_hurt_plus",
                "spearman",
                "sign_agree",
            ]
        ],
        hide_index=True,
        column_config={
            "sae": st.column_config.TextColumn("SAE"),
            "n_live": st.column_config.NumberColumn("live features"),
            "n_sample": st.column_config.NumberColumn("sampled", help="features measured exactly, spread over density"),
            "hurt_plus": st.column_config.NumberColumn("hurt at +1", format="percent"),
            "hurt_minus": st.column_config.NumberColumn("hurt at −1", format="percent"),
            "hurt_both": st.column_config.NumberColumn("hurt at both", format="percent"),
            "est_hurt_plus": st.column_config.NumberColumn(
                "hurt at +1 (estimate)", format="percent", help="first order: at −1 it is 1 minus this"
            ),
            "spearman": st.column_config.NumberColumn("estimate vs exact ρ", format="%.2f"),
            "sign_agree": st.column_config.NumberColumn("same sign", format="percent"),
        },
    )
    line = claims.steering_claim(summary)
    if line:
        st.markdown(line)
    st.caption(
        "Steering adds ±1 × a feature's max activation × its decoder direction at its hook on every position of the "
        "splice sample (the Feature page's unit). Exact: a real steered forward, for each SAE's sampled features "
        "and for the estimate's best and worst (--steer-sample, --steer-extremes); estimate: first order, "
        "max × (∇loss · decoder row), for every feature from one backward pass."
    )
    sae = common.choice("steer_sae", list(summary["sae"]), "SAE", summary["sae"].iloc[-1], widget="selectbox")
    t = queries.steering(db, sae)
    c1, c2 = st.columns(2)
    with c1:
        common.chart(figures.steering_spread(t, unit), key="steer_spread")
    with c2:
        common.chart(figures.steering_density(t, unit), key="steer_density")
        live = t[t["estimate"].notna() & (t["density"] > 0)]
        rho = claims.rank_corr(np.log10(live["density"]), live["estimate"].abs())
        if np.isfinite(rho):
            st.caption(f"Does density predict the size of the effect? ρ(log10 density, |estimate|) = {rho:+.2f}.")
    helps = t.assign(best=np.fmin(t["exact_plus"], t["exact_minus"]))
    helps = helps[helps["best"] < 0].sort_values("best")
    n_exact = int(t["exact_plus"].notna().sum())
    st.markdown(f"**Features whose steering lowers the loss** (exact, {len(helps)} of {n_exact} measured)")
    if not helps.empty:
        helps = helps.assign(
            open=[common.url("Feature", sae=sae, feature=int(f)) for f in helps["feature"]],
            sign=np.where(helps["exact_plus"] <= helps["exact_minus"], "+1", "−1"),
        )
        st.dataframe(
            helps[["open", "feature", "sign", "best", "exact_plus", "exact_minus", "estimate", "density"]],
            hide_index=True,
            column_config={
                "open": st.column_config.LinkColumn("open", display_text="open"),
                "best": st.column_config.NumberColumn("loss change", format="%+.4f"),
                "exact_plus": st.column_config.NumberColumn("at +1", format="%+.4f"),
                "exact_minus": st.column_config.NumberColumn("at −1", format="%+.4f"),
                "estimate": st.column_config.NumberColumn("estimate at +1", format="%+.4f"),
                "density": st.column_config.NumberColumn(format="%.2e"),
            },
        )


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
    together = claims.measured_together(saes)
    if together:
        st.markdown(together)
    links = {s: common.figure_url("Layer", sae=s) for s in saes["sae"]}
    out = queries.splice_output(db)
    harm = HARM[out["metric"].iloc[0]] if not out.empty else "output harm"
    n_tok, n_seq, every = int(prop["n_tokens"].max()), prop["splice_seqs"].max(), int(prop["splice_every"].max())
    spread = "the first ones" if every == 1 else f"consecutive pairs from every {every}th pair (--splice-every)"
    sample = f"on the splice sample: {n_tok:,} tokens of {n_seq} sequences (--splice-seqs), {spread}"
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
        df = figures.output_cells(out)
        col, fmt, bar = "harm", ".4f", harm
        text = (
            f"The model's output with the row's SAE alone spliced in: {harm}, against the clean model on the same "
            "sequences."
        )
    if df.empty:
        st.info("No cell of this heatmap applies here: no family has an SAE at a later hook than another.")
    else:
        # static: no drag layer over the values, so their links click (hover would need one)
        common.chart(figures.propagation_heatmap(df, col, links, fmt, bar), key="spread", config={"staticPlot": True})
    st.caption(f"{text} Measured {sample}. Click a value to open the spliced SAE's layer page.")
    if not df.empty:
        with st.expander("The numbers"):
            st.dataframe(_numbers(df, which), hide_index=True)
    worst = claims.worst_spreader(prop)
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
    common.chart(figures.compounding(out, saes, harm), key="compound")
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
    common.chart(figures.context_ev(known, metric), key="context_ev")
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
