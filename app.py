"""Overview of every SAE in a feature database. `streamlit run app.py`; other pages live in pages/."""

import streamlit as st

from backend.density import DENSE, ULTRALOW, resolution_floor
from backend.store import queries
from backend.store.schema import RunStatus
from ui import common, figures, labeling
from ui.tokens import md

common.setup("Overview")
DOWNSTREAM_HELP = (
    "The SAE's reconstruction spliced into the model at its hook, on the run's splice sample: how much of the "
    "model's own loss it keeps, (loss ablated − loss spliced) / (loss ablated − loss clean), where ablated zeroes "
    "the hook; 1 = nothing lost, 0 = as bad as zeroing, above 1 = the splice lowered the loss. The loss: next-token "
    "CE for causal LMs (ce_loss_recovered); for sentence encoders the contrastive loss they were trained with "
    "(contrastive_loss_recovered: sentence-transformers' MultipleNegativesRankingLoss over adjacent-window pairs)."
)


@common.page
def overview() -> None:
    db = common.database()
    common.labeler()
    common.copy_link()
    st.title("SAE features: overview")
    saes = queries.saes(db)
    if saes.empty:
        st.info("This database has no complete SAE yet. `python -m backend info` shows its runs.")
        return
    runs = queries.runs(db)
    done = runs[runs["status"] == RunStatus.COMPLETE]
    st.caption(
        md(
            f"{len(saes)} SAEs · model {', '.join(done['model'].unique())} · "
            f"corpus {', '.join(done['corpus'].unique())} · {int(done['n_tokens'].sum()):,} tokens"
        )
    )
    unfinished = runs[runs["status"] != RunStatus.COMPLETE]
    if len(unfinished):
        st.warning(
            md(
                f"{len(unfinished)} run(s) not complete: "
                + ", ".join(f"{r.run_id} ({r.status})" for r in unfinished.itertuples())
            )
        )

    # key columns first, so they show without scrolling; a new frame, never the cached one
    cols = ["sae", "hook", "l0", "explained_variance", "ev_inside", "ev_beyond", "downstream_value", "n_dead"]
    cols += ["n_dense", "architecture", "train_context", "d_sae", "downstream_metric", "recon_tokens", "n_tokens"]
    table = saes[cols].assign(open=[common.url("Layer", sae=s) for s in saes["sae"]])[["open", *cols]]
    st.dataframe(
        table,
        hide_index=True,
        height=35 * (len(table) + 1) + 3,  # every SAE's row, no inner scrolling
        column_config={
            "open": st.column_config.LinkColumn("layer page", display_text="open"),
            "l0": st.column_config.NumberColumn("L0", format="%.1f", help="mean number of active features per token"),
            "explained_variance": st.column_config.NumberColumn(
                "explained var.",
                format="%.3f",
                help="1 − Σ‖x − x̂‖² / Σ‖x − mean x‖²: the share of the residual stream's variance the SAE reconstructs",
            ),
            "ev_inside": st.column_config.NumberColumn(
                "EV in training context",
                format="%.3f",
                help="explained variance on token positions the SAE saw in training (position < its training context)",
            ),
            "ev_beyond": st.column_config.NumberColumn(
                "EV beyond it",
                format="%.3f",
                help="explained variance on positions at or past the SAE's training context; empty when this run "
                "never read that far or the context is unknown (precompute --sae-context)",
            ),
            "train_context": st.column_config.NumberColumn("trained on (tokens)"),
            "downstream_value": st.column_config.NumberColumn("downstream", format="%.3f", help=DOWNSTREAM_HELP),
            "downstream_metric": st.column_config.TextColumn("downstream metric", help=DOWNSTREAM_HELP),
            "n_dead": st.column_config.NumberColumn("dead", help="features that never fired on the corpus"),
            "n_dense": st.column_config.NumberColumn(
                f"dense (>{DENSE:.0%})", help=f"features active on more than {DENSE:.0%} of tokens"
            ),
            "n_tokens": "tokens",
            "recon_tokens": st.column_config.NumberColumn(
                "explained var. on",
                help="tokens on which explained variance was measured (precompute --recon-every)",
                format="localized",
            ),
        },
    )

    st.subheader("Feature density per layer")
    views = {"facet": "one panel per SAE", "heatmap": "one row per SAE", "overlay": "overlaid"}
    mode = common.choice("view", views, "Histograms", "facet" if len(saes) <= figures.FACET_MAX else "heatmap")
    n_tok = int(saes["n_tokens"].max())
    floor = resolution_floor(n_tok)
    common.chart(figures.density_histograms(queries.density_hist(db), saes, mode, floor), key="dens")
    st.caption(
        f"{len(saes)} SAEs × their features, densities over {n_tok:,} tokens. Dead features (never active) are not "
        f"in the histograms; the table counts them. Dotted lines: the dense cut ({DENSE:.0%}) and the resolution floor "
        f"1 / {n_tok:,} tokens = {10**floor:.1e}: no nonzero density can be measured below it, so an empty "
        f"ultralow (< {ULTRALOW:g}) region means nothing when the floor is above {ULTRALOW:g}."
    )

    st.subheader("Quality across layers")
    common.chart(figures.metric_lines(saes), key="lines")
    # by position, and what each SAE does to the model's loss: one place each, on Across layers
    st.page_link(
        common.ACROSS,
        label="Reconstruction by token position, inside and beyond the training context →",
        query_params=common.link_params(part="reconstruction"),
    )

    labeling.overview_panel(db)


overview()
