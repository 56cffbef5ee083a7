"""Density clusters of one SAE: the feature map, the low-density tail's shared encoder direction,
and dense features with their antipodal partners and position correlation."""

import streamlit as st

from backend import selection
from backend.density import DENSE, format_density, is_dense, resolution_floor
from backend.engine.clusters import ANTIPODAL_COSINE, TAIL_COSINE
from backend.errors import UserError
from backend.labels.joins import with_labels
from backend.positions import POSITIONAL_BITS, bands, describe_bands, explain
from backend.store import queries
from ui import common, figures, labeling
from ui.tokens import md

common.setup("Clusters")

MAX_SELECTED = 300


@common.page
def clusters() -> None:
    db = common.database()
    sae = common.choose_sae(db)
    common.copy_link()
    row = queries.sae_row(db, sae)
    st.title(md(f"Density clusters · {sae}"))
    summary = queries.sae_diagnostics(db, sae)
    df = queries.diagnostics(db, sae)
    status = labeling.status_table(db, sae)
    df = with_labels(df, status)
    df["label"] = df["label"].fillna("")
    n_tok = row.n_tokens

    st.subheader("Feature map")
    method = summary.map_method
    overlay = figures.map_overlay(df) if len(df) > figures.SVG_POINTS else None  # once: caption and figure
    tiled = (
        ""
        if overlay is None
        else f" Past {figures.SVG_POINTS:,} features the map is tiles, which a browser draws far quicker than "
        f"{len(df):,} points: each tile's colour is the median log10 density of the features in it (grey: dead ones "
        f"only), and the labeled and dense features are points on top"
        + (
            ""
            if len(overlay) < figures.OVERLAY_POINTS
            else f" (the labeled ones and a fixed sample of the dense ones, {figures.OVERLAY_POINTS:,} in all)"
        )
        + ". A box or lasso takes every feature under it, drawn or not."
    )
    st.caption(
        f"The {len(df):,} features, each placed by its decoder direction "
        + (
            "(UMAP, cosine metric, seed 0)"
            if method == "umap"
            else "(first two principal components of the unit-norm directions: precompute --feature-map pca, or an "
            "SAE too narrow for UMAP)"
        )
        + f"; colour: log10 density over {n_tok:,} tokens (grey: dead); shape: the team's verdict; ringed: dense "
        f"(> {DENSE:.0%}). Lasso or box-select points to list them; select one point to open it.{tiled}"
    )
    event = common.chart(
        figures.feature_map(df, method, overlay),
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
        key="map",
    )
    chosen_now = (event.selection or {}) if event else {}
    if chosen_now.get("box") or chosen_now.get("lasso"):
        picked = sorted(df.loc[selection.inside(df["map_x"], df["map_y"], chosen_now), "feature"].astype(int))
    else:
        picked = sorted({int(p["customdata"]) for p in chosen_now.get("points", []) if "customdata" in p})
        if len(picked) == 1:
            st.switch_page(common.FEATURE, query_params=common.link_params(sae=sae, feature=picked[0]))
    if picked:
        common.set_params(sel=",".join(map(str, picked[:MAX_SELECTED])))
        if len(picked) > MAX_SELECTED:
            st.caption(f"{len(picked):,} features selected; the first {MAX_SELECTED} by number are listed.")
    chosen = _selected(df)
    if chosen is not None:
        sel = df[df["feature"].isin(chosen)].assign(open=lambda d: common.feature_urls(sae, d["feature"]))
        st.markdown(f"**{len(sel):,} selected features**")
        st.dataframe(
            sel[["feature", "density", "max_act", "top_tokens", "label", "open"]],
            hide_index=True,
            column_config={
                "density": st.column_config.NumberColumn(format="%.2e"),
                "open": st.column_config.LinkColumn("feature page", display_text="open"),
            },
        )

    st.subheader("The low-density tail: one shared encoder direction?")
    cut, n_tail, share = summary.tail_cut, summary.tail_n, summary.tail_share
    how = "the valley above the layer's low-density mode" if summary.tail_auto else "given with --tail-below"
    if n_tail == 0:
        st.info(
            f"No live feature lies below the tail cut ({format_density(cut)}, {how}): this SAE has no low-density "
            f"tail at {n_tok:,} tokens (the smallest measurable density is 1 / {n_tok:,} = "
            f"{10 ** resolution_floor(n_tok):.1e})."
        )
    else:
        common.chart(figures.tail_cosines(df, cut), key="tail")
        st.markdown(
            f"**{n_tail:,}** live features have density below {cut:.2e} ({how}). **{share:.0%}** of them have an "
            f"encoder direction within cosine {TAIL_COSINE} of their mean direction"
            + (
                ": most of the tail is one direction learned many times, a training artefact rather than many features."
                if share >= 0.5
                else ": the tail is not one shared direction."
            )
        )
        st.caption(f"On {len(df):,} features' encoder weights; densities over {n_tok:,} tokens.")

    st.subheader(f"Dense features (> {DENSE:.0%})")
    dense = df[is_dense(df["density"])].sort_values("density", ascending=False)
    if dense.empty:
        st.info(f"No feature of this SAE fires on more than {DENSE:.0%} of the {n_tok:,} tokens.")
        return
    table = dense.assign(
        open=common.feature_urls(sae, dense["feature"]),
        partner_page=common.feature_urls(sae, dense["anti_partner"]),
    )
    st.dataframe(
        table[
            [
                "feature",
                "density",
                "anti_partner",
                "anti_cos",
                "pos_corr",
                "pos_kl",
                "top_tokens",
                "label",
                "open",
                "partner_page",
            ]
        ],
        hide_index=True,
        column_config={
            "density": st.column_config.NumberColumn(format="%.3f"),
            "anti_partner": st.column_config.NumberColumn("antipodal partner"),
            "anti_cos": st.column_config.NumberColumn("decoder cosine", format="%.3f"),
            "pos_corr": st.column_config.NumberColumn("corr. with position", format="%+.3f"),
            "pos_kl": st.column_config.NumberColumn("position bits", format="%.2f"),
            "open": st.column_config.LinkColumn("feature", display_text="open"),
            "partner_page": st.column_config.LinkColumn("partner", display_text="open"),
        },
    )
    pairs = int((dense["anti_cos"] < ANTIPODAL_COSINE).sum())
    st.caption(
        f"{len(dense):,} dense features. Partner: the feature whose decoder direction is most anti-aligned "
        f"(minimum cosine among all {len(df):,}); {pairs} of them have one below {ANTIPODAL_COSINE}, an antipodal "
        "pair. Position "
        f"correlation: Pearson, of the activation (0 where silent) with the token's position, over all {n_tok:,} "
        "counted tokens; it misses features that fire in narrow bands of positions, which the next table finds."
    )
    _positional(db, sae, dense)


def _positional(db: str, sae: str, dense) -> None:
    """Dense features whose firings crowd into some positions (positions.py)."""
    st.subheader("Positional dense features")
    diag = queries.sae_diagnostics(db, sae)
    width, tokens, seq_len = diag.pos_width, diag.pos_tokens, queries.sae_row(db, sae).context_len
    hits = dense[dense["pos_kl"] >= POSITIONAL_BITS].sort_values("pos_kl", ascending=False)
    meaning = explain(width, len(tokens))
    if hits.empty:
        st.info(f"No dense feature of this SAE is positional (all below {POSITIONAL_BITS:g} bit). {meaning}")
        return
    prof = queries.position_profiles(db, sae, tuple(int(f) for f in hits["feature"]))
    found = {int(r.feature): bands(r.pos_fire, tokens, width, seq_len) for r in prof.itertuples()}
    table = hits.assign(
        bands=[describe_bands(found.get(int(f), [])) for f in hits["feature"]],
        open=common.feature_urls(sae, hits["feature"]),
    )
    st.dataframe(
        table[["feature", "density", "pos_kl", "bands", "pos_corr", "top_tokens", "label", "open"]],
        hide_index=True,
        column_config={
            "density": st.column_config.NumberColumn(format="%.3f"),
            "pos_kl": st.column_config.NumberColumn("bits from the tokens' spread", format="%.2f"),
            "bands": st.column_config.TextColumn("fires most at positions"),
            "pos_corr": st.column_config.NumberColumn("corr. with position", format="%+.3f"),
            "open": st.column_config.LinkColumn("feature", display_text="open"),
        },
    )
    st.caption(f"{len(hits):,} of {len(dense):,} dense features, listed from {POSITIONAL_BITS:g} bit. {meaning}")


def _selected(df) -> list[int] | None:
    raw = common.param("sel")
    if raw is None:
        return None
    try:
        return [int(x) for x in raw.split(",")][:MAX_SELECTED]
    except ValueError:
        raise UserError(f"URL parameter sel={raw[:60]!r}: use comma-separated feature numbers") from None


clusters()
