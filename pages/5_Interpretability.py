"""How interpretability depends on density, per layer, and how much labelers agree."""

import streamlit as st

from backend import labels
from backend.density import TOO_FEW_FIRINGS, bucket_order
from backend.errors import UserError
from backend.explanations import against_verdicts as av
from backend.store import queries
from ui import auto_scores, common, figures, labeling
from ui.tokens import md

common.setup("Interpretability")


@common.page
def interpretability() -> None:
    db = common.database()
    common.labeler()
    common.copy_link()
    st.title("Interpretability against density")
    cur = labeling.current_with_density(db)
    if cur.empty:
        st.info("No labels for this database yet. Use the Label queue page, or import a file below.")
    else:
        _by_density(db, cur)
        _agreement(cur)
    _automatic(db, cur)
    _export_import()


def _by_density(db: str, cur) -> None:
    few = cur["count"].fillna(0) < TOO_FEW_FIRINGS
    table = labels.interpretability_by_bucket(cur[~few])
    common.chart(figures.interpretability_chart(table), key="interp")
    n_few = cur[few]["feature"].nunique()
    st.caption(
        "Each feature counts once, by the majority of its labelers' current verdicts ('unsure' abstains; a tie "
        "between interpretable and not is left out); n, on each point, is the number of such features."
        + (
            f" Left out: {n_few} labeled feature(s) that fired fewer than {TOO_FEW_FIRINGS} times, too few to judge."
            if n_few
            else ""
        )
    )
    order = {b: i for i, b in enumerate(bucket_order())}
    shown = table.merge(queries.saes(db)[["sae", "depth"]], on="sae")
    shown = shown.assign(_o=shown["bucket"].map(order)).sort_values(["depth", "sae", "_o"])
    st.dataframe(
        shown[["sae", "bucket", "k", "n", "frac", "lo", "hi"]],
        hide_index=True,
        column_config={
            "k": "interpretable",
            "n": "features judged",
            "frac": st.column_config.NumberColumn("fraction", format="%.2f"),
            "lo": st.column_config.NumberColumn("95% CI low", format="%.2f"),
            "hi": st.column_config.NumberColumn("95% CI high", format="%.2f"),
        },
    )


def _agreement(cur) -> None:
    st.subheader("Agreement between labelers")
    ag = labels.agreement(cur)
    if ag["n_features"] == 0:
        st.caption("No feature has labels from two or more labelers yet (use the queue's agreement mode).")
        return
    cols = st.columns(4)
    cols[0].metric("features with ≥2 labelers", ag["n_features"])
    cols[1].metric("percent agreement", f"{ag['percent_agreement']:.0%}")
    cols[2].metric("Fleiss' kappa", f"{ag['fleiss_kappa']:.2f}")
    if "cohen_kappa" in ag:
        cols[3].metric(md(f"Cohen's kappa ({' vs '.join(ag['cohen_pair'])})"), f"{ag['cohen_kappa']:.2f}")
    dis = labels.disagreements(cur)
    st.markdown(f"**Disagreements** ({len(dis)})")
    dis = dis.assign(open=[common.feature_url(s, f) for s, f in zip(dis["sae"], dis["feature"])])
    st.dataframe(
        dis[["open", "db", "sae", "feature", "verdicts"]],
        hide_index=True,
        column_config={"open": st.column_config.LinkColumn("", display_text="open")},
    )


def _automatic(db: str, cur) -> None:
    st.subheader("Automatic explanation scores against the team's verdicts")
    scores = auto_scores.scores_of(db)
    if scores is None:
        return
    scored = scores.dropna(subset=["score"])
    if scored.empty:
        st.caption(
            "No imported explanation scores for this database. delphi's detection and fuzzing scores come in with "
            "`python -m backend explanations import RESULTS_FOLDER --db ... --sae ...`."
        )
        return
    names = sorted(set(scored["sae"]))
    sae = common.choice("auto_sae", names, "SAE", names[0], widget="selectbox")
    kind, fscores, thr = auto_scores.choose(scores[scores["sae"] == sae])
    mine = cur[cur["sae"] == sae] if not cur.empty else cur
    densities = queries.densities(db, sae)[["feature", "log10_density"]]
    ov = av.overall(mine, fscores)
    cols = st.columns(3)
    if ov["n_pos"] and ov["n_neg"]:
        cols[0].metric("ROC AUC (95% CI)", f"{ov['auc']:.2f} [{ov['lo']:.2f}, {ov['hi']:.2f}]")
        cols[1].metric("best threshold (Youden's J)", f"{ov['best']:.2f} (J {ov['j']:.2f})")
    else:
        cols[0].metric("ROC AUC", "—")
        cols[1].metric("best threshold", "—")
    cols[2].metric("features judged and scored", f"{ov['n']} ({ov['n_pos']} yes, {ov['n_neg']} no)")
    table = av.by_bucket(mine, fscores, densities, thr)
    common.chart(figures.scores_against_verdicts(table, thr), key="auto_vs_team")
    st.caption(
        md(
            f"Scores: {auto_scores.label(kind)}; a feature's score is its best explanation's. The AUC is the chance "
            "that a feature the team calls interpretable outscores one it does not (DeLong interval); per bucket it "
            f"is given with at least {av.MIN_PER_CLASS} features of each verdict. The dashed curve is an "
            f"extrapolation: the share of all {len(fscores):,} scored features at or above the threshold, as if the "
            "score were the verdict."
        )
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "frac": st.column_config.NumberColumn("team: fraction", format="%.2f"),
            "lo": st.column_config.NumberColumn("low", format="%.2f"),
            "hi": st.column_config.NumberColumn("high", format="%.2f"),
            "mean_score": st.column_config.NumberColumn("mean score", format="%.3f"),
            "pass_frac": st.column_config.NumberColumn("automatic: fraction", format="%.2f"),
            "pass_lo": st.column_config.NumberColumn("low", format="%.2f"),
            "pass_hi": st.column_config.NumberColumn("high", format="%.2f"),
            "auc": st.column_config.NumberColumn("AUC", format="%.2f"),
            "auc_lo": st.column_config.NumberColumn("low", format="%.2f"),
            "auc_hi": st.column_config.NumberColumn("high", format="%.2f"),
        },
    )
    dis = av.disagreements(mine, fscores, thr)
    st.markdown(f"**Where they disagree** ({len(dis)})")
    st.page_link(
        common.QUEUE,
        label="Label these first in the queue (blind)",
        icon=":material/checklist:",
        query_params=common.link_params(
            sae=sae, mode="disagreements", score=common.param("score"), thr=common.param("thr")
        ),
    )
    dis = dis.assign(open=common.feature_urls(sae, dis["feature"]))
    st.dataframe(
        dis[["open", "feature", "team", "score", "automatic", "log10_density"]],
        hide_index=True,
        column_config={
            "open": st.column_config.LinkColumn("", display_text="open"),
            "score": st.column_config.NumberColumn(format="%.3f"),
            "log10_density": st.column_config.NumberColumn("log10 density", format="%.2f"),
        },
    )


def _export_import() -> None:
    st.subheader("Export and import")
    where = labeling.labels_location()
    try:
        everything = labels.all_labels(where)
    except UserError as e:
        labeling.store_warning(e)
        return
    cols = st.columns(3)
    for col, fmt, mime in zip(
        cols, ("csv", "json", "parquet"), ("text/csv", "application/json", "application/octet-stream")
    ):
        col.download_button(
            f"Download {fmt.upper()} ({len(everything)} labels, with history)",
            labels.to_bytes(everything, fmt),
            file_name=f"labels.{fmt}",
            mime=mime,
            key=f"dl_{fmt}",
        )
    if not labeling.write_allowed(key="w_pw_import"):
        st.caption("Importing labels needs the labeling password.")
        return
    up = st.file_uploader("Import labels (CSV, JSON or Parquet exported by this tool)", type=["csv", "json", "parquet"])
    if up is not None and st.session_state.get("_imported") != up.file_id:
        fmt = up.name.rsplit(".", 1)[-1].lower()
        try:
            n = labels.import_table(labels.read_table(up.getvalue(), fmt), where)
        except UserError as e:
            st.error(md(e))
        else:
            st.session_state["_imported"] = up.file_id
            st.success(f"Imported {n} new labels.")


interpretability()
