"""How interpretability depends on density, per layer, and how much labelers agree."""

import pandas as pd
import streamlit as st

from backend import labels, queries, render
from backend.errors import UserError
from ui import common, labeling

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
        table = labels.interpretability_by_bucket(cur, render.density_bucket)
        st.plotly_chart(render.interpretability_chart(table), key="interp")
        saes = queries.saes(db)[["sae", "layer"]]
        table = table.merge(saes, on="sae").sort_values(["layer", "sae"])
        table["bucket"] = pd.Categorical(table["bucket"], render.bucket_order(), ordered=True)
        st.dataframe(
            table.sort_values(["layer", "sae", "bucket"])[["sae", "bucket", "k", "n", "frac", "lo", "hi"]],
            hide_index=True,
            column_config={
                "k": "interpretable",
                "n": "judged (not unsure)",
                "frac": st.column_config.NumberColumn("fraction", format="%.2f"),
                "lo": st.column_config.NumberColumn("95% CI low", format="%.2f"),
                "hi": st.column_config.NumberColumn("95% CI high", format="%.2f"),
            },
        )

        st.subheader("Agreement between labelers")
        ag = labels.agreement(cur)
        if ag["n_features"] == 0:
            st.caption("No feature has labels from two or more labelers yet (use the queue's agreement mode).")
        else:
            cols = st.columns(4)
            cols[0].metric("features with ≥2 labelers", ag["n_features"])
            cols[1].metric("percent agreement", f"{ag['percent_agreement']:.0%}")
            cols[2].metric("Fleiss' kappa", f"{ag['fleiss_kappa']:.2f}")
            if "cohen_kappa" in ag:
                cols[3].metric(f"Cohen's kappa ({' vs '.join(ag['cohen_pair'])})", f"{ag['cohen_kappa']:.2f}")
            dis = labels.disagreements(cur)
            st.markdown(f"**Disagreements** ({len(dis)})")
            dis.insert(0, "open", [common.feature_url(s, f) for s, f in zip(dis["sae"], dis["feature"])])
            st.dataframe(
                dis, hide_index=True, column_config={"open": st.column_config.LinkColumn("", display_text="open")}
            )

    st.subheader("Export and import")
    everything = labels.all_labels(labeling.labels_path())
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
    up = st.file_uploader("Import labels (CSV, JSON or Parquet exported by this tool)", type=["csv", "json", "parquet"])
    if up is not None and st.session_state.get("_imported") != up.file_id:
        fmt = up.name.rsplit(".", 1)[-1].lower()
        try:
            n = labels.import_table(labels.read_table(up.getvalue(), fmt), labeling.labels_path())
        except UserError as e:
            st.error(str(e))
        else:
            st.session_state["_imported"] = up.file_id
            st.success(f"Imported {n} new labels.")


interpretability()
