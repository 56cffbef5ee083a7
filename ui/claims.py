"""Sentences that state what a run's numbers say about the research notes' claims on model
performance. Pure functions of query results (no Streamlit), so tests can check them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ui.figures import context_label, short_hook
from ui.tokens import md


def rank_corr(x, y) -> float:
    x, y = pd.Series(list(x), dtype=float), pd.Series(list(y), dtype=float)
    return float(x.corr(y, method="spearman")) if len(x) > 2 and x.nunique() > 1 and y.nunique() > 1 else float("nan")


def context_claims(ctx: pd.DataFrame) -> list[str]:
    """Per family: which layer hurts most in the shortest and the longest context, whether depth
    and harm go together there as the notes say (short: later worse; long: earlier worse), and
    whether SAEs hurt more past their training context than inside it."""
    out = []
    for fam, g in ctx.groupby("architecture"):
        short, long_ = g["ctx_lo"].min(), g["ctx_lo"].max()
        parts = []
        for lo, word, want in ((short, "shortest", 1), (long_, "longest", -1)):
            col = g[g["ctx_lo"] == lo]
            worst = col.loc[col["increase"].idxmax()]
            rho = rank_corr(col["depth"], col["increase"])
            agree = "" if np.isnan(rho) else (" (as the notes say)" if np.sign(rho) == want else " (against the notes)")
            trend = "" if np.isnan(rho) else f", depth vs harm ρ = {rho:+.2f}{agree}"
            parts.append(
                f"in the {word} contexts ({context_label(int(col['ctx_lo'].iloc[0]), int(col['ctx_hi'].iloc[0]))}) "
                f"{md(short_hook(worst['hook']))} hurts most ({worst['increase']:+.3f}{trend})"
            )
        beyond = []
        for _, r in g.groupby("sae"):
            tc = r["train_context"].iloc[0]
            if pd.isna(tc):
                continue
            inside, past = r[r["ctx_hi"] <= tc]["increase"], r[r["ctx_lo"] > tc]["increase"]
            if len(inside) and len(past):
                beyond.append(past.mean() > inside.mean())
        tail = (
            f"; {sum(beyond)} of {len(beyond)} SAEs hurt more past their training context than inside it"
            if beyond
            else ""
        )
        out.append(f"**{md(fam)}**: " + "; ".join(parts) + tail + ".")
    return out


def pathological_claim(df: pd.DataFrame) -> str | None:
    """How many SAEs' errors raise the loss more than random errors of the same norm."""
    d = df[df["random_increase"].notna()]
    if d.empty:
        return None
    worse = d[d["increase"] > d["random_increase"]]
    rated = d["ratio"].dropna()
    med = f" (median ratio {rated.median():.1f}× over the {len(rated)} where random errors raise it at all)"
    return (
        f"{len(worse)} of {len(d)} SAEs' reconstruction errors raise the loss more than random directions of the "
        f"same norm per token" + (med if len(rated) else "") + "."
    )


def steering_claim(summary: pd.DataFrame) -> str | None:
    """Over every SAE's density-spread sample: the share of steered features that raise the loss."""
    s = summary[summary["n_sample"] > 0]
    if s.empty:
        return None
    n = int(s["n_sample"].sum())
    w = s["n_sample"] / n
    plus, minus, both = (float((s[c] * w).sum()) for c in ("hurt_plus", "hurt_minus", "hurt_both"))
    helps = 1 - both
    return (
        f"Across the {len(s)} SAEs' samples ({n} features, measured exactly): steering at +1 raises the loss for "
        f"{plus:.0%} of features, at −1 for {minus:.0%}; {both:.0%} hurt at both signs and {helps:.0%} help at one "
        f"of them at least."
    )


def worst_spreader(prop: pd.DataFrame) -> str | None:
    """Per family, the SAE whose splice moves the later hooks most (mean over those hooks)."""
    later = prop[prop["hook"] != prop["spliced_hook"]]
    if later.empty:
        return None
    parts = []
    for fam, g in later.groupby("architecture"):
        mean = g.groupby(["sae", "spliced_hook"])["resid_change"].mean().sort_values(ascending=False)
        (sae, hook), v = mean.index[0], mean.iloc[0]
        parts.append(
            f"**{md(fam)}**: splicing {md(sae)} ({md(short_hook(hook))}) moves later hooks most, {v:.3f} on average"
        )
    return "Which SAE hurts later layers most: " + "; ".join(parts) + "."


def measured_together(saes: pd.DataFrame) -> str | None:
    """Where a run was built in groups (precompute --append), which SAEs were measured together:
    propagation and compounding pair only SAEs of one group. None for runs built in one pass."""
    parts = []
    for run_id, run in saes.groupby("run_id", sort=False):
        if run["grp"].nunique() < 2:
            continue
        groups = "; ".join(
            f"group {int(g)}: {', '.join(md(s) for s in members['sae'])}" for g, members in run.groupby("grp")
        )
        parts.append(f"run {md(str(run_id))} was built in {run['grp'].nunique()} groups ({groups})")
    if not parts:
        return None
    return (
        "Measured together: " + "; ".join(parts) + ". An SAE's error is followed to later hooks, and chained with "
        "its family, only through SAEs of its own group (precompute --append); the other cells are blank."
    )
