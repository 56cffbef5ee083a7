"""Feature panels used by the Feature page and the blind label queue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from backend.density import DENSE, TOO_FEW_FIRINGS, format_density, is_dense, log10_density, resolution_floor
from backend.errors import UserError
from backend.examples import activation_share, dedupe_windows, distinct_contexts, equal_width_groups
from backend.explanations import store
from backend.positions import POSITIONAL_BITS, bands, describe_bands, explain
from backend.store import queries
from backend.store.schema import ExampleKind
from ui import common, figures
from ui.tokens import CSS as TOKENS_CSS
from ui.tokens import example_rows_html, md, one_block

CSS = TOKENS_CSS.replace(
    "</style>",
    "table.labels td, table.labels th { padding: 2px 8px; text-align: left; vertical-align: top; }\n</style>",
)


QUANTILE_MODES = {"count": "equal-count quantiles", "width": "equal-width intervals"}


TOP_MODES = {"contexts": "distinct contexts", "tokens": "every top token (exact top-k)"}


def rows(markup: str) -> None:
    """Examples drawn as markdown's raw HTML, not `st.html`: Streamlit loads its HTML element's code
    on a page's first use and shows a page's late elements together, so on a full load the examples
    waited for the figures above them (demo Feature page, full loads, time to the first example,
    interleaved with `st.html`: p50 2.00 → 1.77 s, p95 2.53 → 1.99 s, 12 rounds). At Gemma scale
    (325 KB of examples, which markdown parses) it is a wash: the first example p50 0.2 s later, the
    page drawn 0.2 s sooner, p95 the same. Same markup, same look (compared in Chromium)."""
    st.markdown(one_block(markup), unsafe_allow_html=True)


def examples_panel(
    db: str, sae: str, f: int, n_top: int | None = None, quantiles: bool = True, exact: bool = False
) -> None:
    """Top examples (and sampled ones): one per context by default (the URL's `tops` chooses the
    exact token-level top-k instead; `exact` forces it, as the blind queue's fixed count needs)."""
    ex = queries.examples(db, sae, f)
    st.markdown(CSS, unsafe_allow_html=True)  # a <style> block: no blank line in it
    if ex.empty:
        st.info("This feature never fired on the corpus: no examples.")
        return
    scale = float(ex["value"].max())
    top = dedupe_windows(ex[ex["kind"] == ExampleKind.TOP])
    mode = "tokens" if exact else common.choice("tops", TOP_MODES, "Top examples as", "contexts")
    if mode == "contexts":
        top = distinct_contexts(top)
    if n_top is not None:
        top = top.head(n_top)
    st.markdown(f"**Top activations** (shading relative to the max, {scale:.3g}; hover a token for its value)")
    rows(example_rows_html(top, lambda r: scale))
    if quantiles:
        sampled_panel(db, sae, f, ex[ex["kind"] == ExampleKind.QUANTILE])


def sampled_panel(db: str, sae: str, f: int, q: pd.DataFrame) -> None:
    """Examples sampled uniformly from all activations, grouped two ways (choice in the URL)."""
    if q.empty:
        return
    st.markdown("**Sampled across the activation range** (a uniform sample of all this feature's activations)")
    mode = common.choice("qmode", QUANTILE_MODES, "Group by", "count", label_visibility="collapsed")
    row, s = queries.feature(db, sae, f), queries.sae_row(db, sae)
    q = dedupe_windows(q)
    if mode == "count":
        n_b = int(q["quantile"].max()) + 1
        for b in sorted(q["quantile"].unique(), reverse=True):
            g = q[q["quantile"] == b]
            st.caption(
                f"quantile {b + 1} of {n_b} (about {1 / n_b:.0%} of activations): "
                f"{g['value'].min():.3g} – {g['value'].max():.3g}; shaded relative to this group's max"
            )
            rows(example_rows_html(g, lambda r, top=float(g["value"].max()): top))
        return
    groups = equal_width_groups(q, row.max_act, int(q["quantile"].max()) + 1)
    for lo, hi, g in groups:
        share = activation_share(row.hist, s.hist_lo, s.hist_hi, lo, hi * (1 + 1e-9))
        st.caption(f"activations {lo:.3g} – {hi:.3g}: about {share:.1%} of all activations, {len(g)} sampled")
        if len(g):
            rows(example_rows_html(g, lambda r, top=hi: top))


def effects_panel(db: str, sae: str, f: int) -> None:
    """What the feature writes toward the output (W_dec · W_U) for a causal model; for an encoder,
    which has no unembedding, only the input tokens whose embeddings its decoder row is closest
    to, which is not an effect on anything the model outputs, and says so."""
    eff = queries.token_effects(db, sae, f)
    if queries.sae_row(db, sae).effect_kind == "unembed":
        st.markdown("**Token effects** — W_dec · W_U: the logits this feature raises and lowers")
        sides = ((1, "promotes"), (-1, "suppresses"))
    else:
        st.markdown("**Input tokens nearest its decoder direction** — W_dec · W_E")
        st.caption(
            "This model is an encoder: it has no unembedding, so a feature has no effect on output tokens to show. "
            "These are the input tokens whose embeddings point along (or against) the feature's decoder row; they "
            "hint at what it reads, not at what it does, and often look like noise."
        )
        sides = ((1, "aligned"), (-1, "opposed"))
    c1, c2 = st.columns(2)
    for col, (d, title) in zip((c1, c2), sides):
        part = eff[eff["direction"] == d][["token", "value"]]
        col.caption(title)
        col.dataframe(part.assign(token=part["token"].map(repr)), hide_index=True, height=250)


def neighbours_panel(db: str, sae: str, f: int) -> None:
    nb = queries.neighbours(db, sae, f)
    st.markdown("**Nearest features** by decoder cosine similarity")
    nb = nb.assign(open=[common.feature_url(sae, x) for x in nb["feature"]], dense=is_dense(nb["density"]))
    st.dataframe(
        nb[["open", "feature", "cosine", "density", "dense", "max_act", "top_tokens"]],
        hide_index=True,
        column_config={
            "open": st.column_config.LinkColumn("", display_text="open"),
            "density": st.column_config.NumberColumn(format="%.2e"),
            "dense": st.column_config.CheckboxColumn(f"dense (>{DENSE:.0%})"),
            "cosine": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def position_panel(db: str, row_sae, f: int) -> None:
    """Where in the sequence the feature fires: its rate per range of positions, and how
    positional that is (positions.py)."""
    sae = row_sae.sae
    diag = queries.sae_diagnostics(db, sae)
    prof = queries.position_profiles(db, sae, (f,))
    if prof.empty:
        return
    r = prof.iloc[0]
    fig = figures.position_profile(r.pos_fire, r.pos_act, diag.pos_tokens, diag.pos_width, row_sae.context_len)
    if fig is None:
        return
    found = bands(r.pos_fire, diag.pos_tokens, diag.pos_width, row_sae.context_len)
    kl = float(r.pos_kl)
    n = int(np.sum(r.pos_fire))
    verdict = "positional" if kl >= POSITIONAL_BITS else "not positional"
    st.markdown(
        f"**Where in the sequence it fires** · {verdict}: {kl:.2f} bits from the tokens' spread over positions"
        + (f"; most in positions {describe_bands(found)}" if found else "")
    )
    common.chart(fig, key="pos_profile", config={"displayModeBar": False})
    few = f" Only {n} firing(s): too few to judge where it fires." if n < TOO_FEW_FIRINGS else ""
    st.caption(
        f"Share of the counted tokens at each range of {diag.pos_width} position(s) on which the feature fires; "
        f"dashed: over all positions. {explain(diag.pos_width, len(diag.pos_tokens))}{few}"
    )


def density_panel(db: str, sae: str, row: dict) -> None:
    feats = queries.densities(db, sae)
    marker = log10_density(row.density)
    marker = None if np.isnan(marker) else marker
    floor = resolution_floor(queries.sae_row(db, sae).n_tokens)
    common.chart(
        figures.layer_histogram(feats, marker=marker, floor=floor), key="feat_density", config={"displayModeBar": False}
    )


def summary(row: dict, n_features: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "density": format_density(row.density),
                "count": row.count,
                "max activation": row.max_act,
                "mean when active": row.mean_act,
                "of features": n_features,
            }
        ]
    )


def imported_explanations(db: str, sae: str, f: int) -> tuple[pd.DataFrame, UserError | None]:
    """The feature's imported explanations, best score first, read once per page: the frame (empty
    where the store cannot be read) and the store's error, if any, for `explanations_panel`."""
    try:
        return store.for_feature(store.location(), Path(db).name, sae, f), None
    except UserError as e:
        return pd.DataFrame(columns=["source", "explainer", "text"]), e


def best_text(df: pd.DataFrame) -> str | None:
    """The best-scored explanation's text: where the label form's description starts."""
    return None if df.empty else str(df["text"].iloc[0])


def explanations_panel(df: pd.DataFrame, problem: UserError | None) -> None:
    """Explanations imported from Neuronpedia or delphi, with a column per scorer; a store that
    cannot be read is a warning here and nowhere else."""
    if problem is not None:
        st.warning(md(problem))
        return
    if df.empty:
        return
    st.markdown("**Imported explanations**")
    scorers = [c for c in df.columns if c not in ("source", "explainer", "text")]
    st.dataframe(
        df,
        hide_index=True,
        column_config={
            "explainer": "explainer model",
            **{
                c: st.column_config.NumberColumn(format="%.3f", help=f"{c} score (delphi: balanced accuracy)")
                for c in scorers
            },
        },
    )
