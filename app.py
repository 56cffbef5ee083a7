"""Overview of every SAE in a feature database. `streamlit run app.py`; other pages live in pages/."""

import streamlit as st

from backend.errors import UserError
from backend.store import queries
from ui import common, figures, labeling
from ui.tokens import md

common.setup("Overview")


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
    done = runs[runs["status"] == "complete"]
    st.caption(
        md(
            f"{len(saes)} SAEs · model {', '.join(done['model'].unique())} · "
            f"corpus {', '.join(done['corpus'].unique())} · {int(done['n_tokens'].sum()):,} tokens"
        )
    )
    unfinished = runs[runs["status"] != "complete"]
    if len(unfinished):
        st.warning(
            md(
                f"{len(unfinished)} run(s) not complete: "
                + ", ".join(f"{r.run_id} ({r.status})" for r in unfinished.itertuples())
            )
        )

    table = saes[
        [
            "sae",
            "hook",
            "architecture",
            "d_sae",
            "l0",
            "explained_variance",
            "recon_tokens",
            "downstream_metric",
            "downstream_value",
            "n_dead",
            "n_dense",
            "n_tokens",
        ]
    ].copy()
    table = table.assign(open=[common.url("Layer", sae=s) for s in saes["sae"]])[["open", *table.columns]]
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "open": st.column_config.LinkColumn("layer page", display_text="open"),
            "l0": st.column_config.NumberColumn("L0", format="%.1f"),
            "explained_variance": st.column_config.NumberColumn("explained var.", format="%.3f"),
            "downstream_value": st.column_config.NumberColumn("downstream", format="%.3f"),
            "n_dead": "dead",
            "n_dense": "dense (>10%)",
            "n_tokens": "tokens",
            "recon_tokens": st.column_config.NumberColumn(
                "explained var. on",
                help="tokens on which explained variance was measured (precompute --recon-every)",
                format="localized",
            ),
        },
    )

    links = st.columns(min(len(saes), 6))
    for i, s in enumerate(saes["sae"]):
        links[i % len(links)].page_link(common.LAYER, label=f"{md(s)} →", query_params=common.link_params(sae=s))

    st.subheader("Feature density per layer")
    common.seed("w_view", "view", common.param("view") or "facet")
    if st.session_state["w_view"] not in ("facet", "overlay"):
        raise UserError(f"URL parameter view={st.session_state['w_view']!r}: use facet or overlay")
    mode = st.radio(
        "Histograms",
        ["facet", "overlay"],
        key="w_view",
        horizontal=True,
        on_change=common.to_url,
        args=("w_view", "view"),
    )
    st.plotly_chart(figures.density_histograms(queries.density_hist(db), mode), key="dens")
    st.caption("Dead features (never active) are not in the histograms; the table counts them.")

    st.subheader("Quality across layers")
    st.plotly_chart(figures.metric_lines(saes), key="lines")
    st.subheader("Reconstruction error by token position")
    st.plotly_chart(figures.position_error(queries.position_error(db)), key="pos")

    labeling.overview_panel(db)


overview()
