"""One SAE: its log10-density histogram (drag a range to filter) and a sortable feature table,
one page of it at a time (filtered, sorted and paged in DuckDB, so a million-feature SAE sends
one page to the browser)."""

import math
from dataclasses import replace

import streamlit as st

from backend.density import DENSE, ULTRALOW, below_floor, is_dense, resolution_floor
from backend.labels.joins import layer_rows, with_labels
from backend.store import feature_lists, queries
from ui import common, figures, labeling
from ui.feature_list import FIRING_LABELS, PAGE_ROWS, PRESETS, SORTS, FeatureList
from ui.tokens import md

common.setup("Layer")


@common.page
def layer() -> None:
    db = common.database()
    common.labeler()
    opened_on_best = common.param("sae") is None
    sae = common.choose_sae(db, default=common.best_reconstructing(db))
    overlay = common.choose_sae(db, key="w_overlay", name="overlay", label="Overlay another SAE", optional=True)
    common.copy_link()
    row = queries.sae_row(db, sae)
    st.title(md(f"Layer · {sae}"))
    if opened_on_best:
        st.caption(
            f"Opened on the SAE that reconstructs best (explained variance {row.explained_variance:.3f}); "
            "choose another in the sidebar."
        )
    st.caption(
        md(
            f"{row.hook} · {row.architecture} · {row.d_sae:,} features · L0 {row.l0:.1f} · "
            f"explained variance {row.explained_variance:.3f} · {row.n_dead:,} dead · {row.n_dense:,} dense"
        )
    )

    listed = FeatureList.from_url()  # the list's parameters, checked (firing and sort: the widgets below)
    preset, lo, hi = listed.preset, listed.lo, listed.hi
    firing = common.choice(
        "fire",
        FIRING_LABELS,
        "Counts as firing",
        "any",
        widget="selectbox",
        help="ReLU SAEs fire with tiny activations that inflate density; a threshold relative to each feature's "
        "max activation leaves them out (applied to its stored activation histogram, exact to within one bin).",
    )
    feats = queries.densities(db, sae, firing)
    other = queries.densities(db, overlay, firing) if overlay else None
    sel = (
        (lo if lo is not None else -10.0, hi if hi is not None else 0.0) if (lo is not None or hi is not None) else None
    )
    floor = resolution_floor(row.n_tokens)
    status = labeling.status_table(db, sae)  # empty, with a warning, if the labels store is unreadable
    fig = figures.layer_histogram(feats, other, names=(sae, overlay or ""), selected=sel, floor=floor)
    reset = st.session_state.setdefault("_hist_reset", 0)
    main, beside = st.columns([3, 2]) if not status.empty else (st.container(), None)
    with main:
        event = common.chart(fig, on_select="rerun", selection_mode="box", key=f"hist{reset}")
    if beside is not None:
        with beside:
            _verdict_histogram(feats, status, floor, row.n_tokens, firing)
    box = (event.selection or {}).get("box") if event else None
    if box:
        x0, x1 = sorted(box[0]["x"][:2])
        new = (round(x0, 3), round(x1, 3))
        if new != (lo, hi):
            common.set_params(lo=new[0], hi=new[1], filter=None)
            st.rerun()

    c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
    common.seed("w_filter", "filter", preset)
    c1.segmented_control(
        "Preset",
        PRESETS,
        key="w_filter",
        on_change=common.to_url,
        args=("w_filter", "filter"),
        help=f"dead: never active · ultralow: density < {ULTRALOW:g} · dense: density > {DENSE:g}",
    )
    sort = common.choice("sort", list(SORTS), "Sort", "density ↓", widget="selectbox", container=c2)
    per = int(common.choice("rows", [str(n) for n in PAGE_ROWS], "Rows per page", "200", "selectbox", c3))
    if c4.button("Clear range", disabled=lo is None and hi is None):
        common.set_params(lo=None, hi=None)
        st.session_state["_hist_reset"] = reset + 1
        st.rerun()

    listed = replace(listed, preset=st.session_state["w_filter"] or "all", firing=firing, sort=sort, rows=per)
    total = feature_lists.count(db, sae, listed.spec())
    n_pages = max(1, math.ceil(total / per))
    page_no = _page_number(listed, n_pages)
    shown = layer_rows(db, sae, status, listed.spec(), (page_no - 1) * per, per)
    if listed.preset == "ultralow" and below_floor(ULTRALOW, row.n_tokens):
        st.warning(
            f"This run read {row.n_tokens:,} tokens, so the smallest density it can measure is "
            f"1 / {row.n_tokens:,} = {10**floor:.1e}, above the ultralow cut {ULTRALOW:g}: no feature can show "
            "as ultralow here, and an empty list says nothing about the SAE. Precompute on more tokens to resolve it."
        )
    rng = f" with log10 density in [{lo if lo is not None else '-∞'}, {hi if hi is not None else 0}]" if sel else ""
    first = (page_no - 1) * per
    rows_note = f" Rows {first + 1:,}–{first + len(shown):,}, page {page_no:,} of {n_pages:,}." if n_pages > 1 else ""
    st.markdown(
        f"**{total:,}** of {row.d_sae:,} features{rng}, over {row.n_tokens:,} tokens; "
        f"firing counts {FIRING_LABELS[firing]}.{rows_note} Click a row to open it."
    )
    picked = st.dataframe(
        shown.assign(dense=is_dense(shown["density"]))[
            ["feature", "density", "log10_density", "dense", "count", "max_act", "mean_act", "top_tokens", "label"]
        ],
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        key="table",
        height=480,
        column_config={
            "density": st.column_config.NumberColumn(format="%.2e"),
            "log10_density": st.column_config.NumberColumn("log10", format="%.2f"),
            "dense": st.column_config.CheckboxColumn(f"dense (>{DENSE:.0%})"),
            "max_act": st.column_config.NumberColumn("max act", format="%.3g"),
            "mean_act": st.column_config.NumberColumn("mean act", format="%.3g"),
        },
    )

    # a form: the typed number travels with the click (a number and a button apart raced in the browser)
    with st.form("goto_form", border=False):
        go = st.columns([1, 1, 4], vertical_alignment="bottom")
        target = go[0].number_input("Open feature #", 0, row.d_sae - 1, step=1, key="w_goto")
        if go[1].form_submit_button("Go to feature"):
            st.switch_page(common.FEATURE, query_params=common.link_params(sae=sae, feature=int(target)))
    rows = picked.selection.rows if picked else []
    if rows:
        f = int(shown.iloc[rows[0]]["feature"])
        st.switch_page(
            common.FEATURE, query_params=common.link_params(sae=sae, feature=f, list="layer", **listed.params())
        )


def _page_number(listed: FeatureList, n_pages: int) -> int:
    """The page of the list to show: the URL's `page`, back to 1 whenever the list itself changes
    (another preset, range, threshold, sort or page size), and at most the last page."""
    spec = (listed.spec(), listed.rows)
    if st.session_state.get("_listed", spec) != spec:
        common.set_params(page=None)
        st.session_state.pop("w_page", None)
    st.session_state["_listed"] = spec
    page_no = min(common.int_param("page", 1) or 1, n_pages)
    if n_pages > 1:
        common.seed("w_page", "page", page_no)
        if not 1 <= st.session_state["w_page"] <= n_pages:  # the file was rebuilt with fewer features
            st.session_state["w_page"] = page_no
        st.number_input("Page", 1, n_pages, key="w_page", on_change=common.to_url, args=("w_page", "page"))
        page_no = int(st.session_state["w_page"])
    return page_no


VERDICT_VIEWS = {"all": "all features", "labeled": "labeled only"}
COUNT_AXES = {"linear": "linear", "log": "log"}


def _verdict_histogram(feats, status, floor: float, n_tokens: int, firing: str) -> None:
    """Beside the main histogram, on its density axis: the team's verdicts."""
    st.markdown("**Density by verdict** (each feature by its labelers' majority)")
    a, b = st.columns(2)
    view = common.choice("verdicts", VERDICT_VIEWS, "Show", "labeled", container=a)
    axis = common.choice("vcount", COUNT_AXES, "Count axis", "linear", container=b)
    by_verdict = with_labels(feats, status)
    fig = figures.verdict_histogram(by_verdict, floor, labeled_only=view == "labeled", log_count=axis == "log")
    common.chart(fig, key="verdicts")
    n_labeled = int(by_verdict["label"].ne("").sum())
    st.caption(
        f"{n_labeled:,} labeled of {len(feats):,} features; densities over {n_tokens:,} tokens "
        f"({FIRING_LABELS[firing]}); bins of 0.1 decade, as beside it. Dead features are not drawn."
    )


layer()
