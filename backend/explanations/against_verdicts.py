"""Do automatic explanation scores agree with the team's verdicts, and in which density range?

A feature's automatic score is its best explanation's score under one (source, explainer,
scorer): a feature is interpretable if some explanation of it works. The team's verdict is the
majority of its labelers' current definite verdicts (labels.agreement.feature_verdicts). How well
the score predicts the verdict is the ROC AUC (the probability that an interpretable feature
outscores a not-interpretable one, ties half) with DeLong's variance for its interval, and the
threshold that best separates the two is the one with the highest Youden's J (sensitivity +
specificity - 1). Every figure is a pure function of data frames, so it is tested by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backend.density import bucket_order, density_bucket
from backend.labels.agreement import feature_verdicts, wilson

DEFAULT_THRESHOLD = 0.7
"""a balanced accuracy of 0.7: well above chance (0.5), the middle of the range delphi reports
for explanations people find good; the page lets the user pick another"""
MIN_PER_CLASS = 5
"""an AUC is given for a bucket only with at least this many features judged interpretable and
this many judged not: fewer make its interval wider than the range it can take"""
KEYS = ["source", "explainer", "scorer"]


def kinds(scores: pd.DataFrame) -> pd.DataFrame:
    """The (source, explainer, scorer) combinations in an SAE's scores, with how many features each
    scores, most first. `scores`: explanations store rows (store.for_sae)."""
    s = scores.dropna(subset=["scorer", "score"]).assign(explainer=lambda d: d["explainer"].fillna(""))
    if s.empty:
        return pd.DataFrame(columns=[*KEYS, "n_features"])
    out = s.groupby(KEYS)["feature"].nunique().rename("n_features").reset_index()
    return out.sort_values(["n_features", *KEYS], ascending=[False, True, True, True]).reset_index(drop=True)


def feature_scores(scores: pd.DataFrame, source: str, explainer: str, scorer: str) -> pd.DataFrame:
    """(feature, score): each feature's best explanation under one source, explainer and scorer."""
    s = scores.dropna(subset=["scorer", "score"]).assign(explainer=lambda d: d["explainer"].fillna(""))
    s = s[(s["source"] == source) & (s["explainer"] == explainer) & (s["scorer"] == scorer)]
    return s.groupby("feature", as_index=False)["score"].max()


def roc_auc(pos: np.ndarray, neg: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """(AUC, low, high): the Mann-Whitney AUC of scores of positives over negatives (ties count
    half), with a normal interval from DeLong's variance, clipped to [0, 1]. NaN without both."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return (math.nan, math.nan, math.nan)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # each positive's and each negative's placement
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = z * math.sqrt(var)
    return (auc, max(0.0, auc - half), min(1.0, auc + half))


def best_threshold(score: np.ndarray, interpretable: np.ndarray) -> tuple[float, float]:
    """(threshold, Youden's J): "score >= threshold" as the verdict, at the observed score that
    separates best (the lowest such score on ties). NaN without both kinds of verdict."""
    score, y = np.asarray(score, dtype=float), np.asarray(interpretable, dtype=bool)
    if y.all() or not y.any():
        return (math.nan, math.nan)
    best = (math.nan, -math.inf)
    for t in np.unique(score):
        said = score >= t
        j = said[y].mean() + (~said[~y]).mean() - 1
        if j > best[1]:
            best = (float(t), float(j))
    return best


def judged_and_scored(current: pd.DataFrame, fscores: pd.DataFrame) -> pd.DataFrame:
    """Features of one SAE with both a team verdict and a score: (feature, interpretable, score,
    log10_density). `current`: the latest labels of that SAE with densities."""
    verdicts = feature_verdicts(current)
    return verdicts[["feature", "interpretable", "log10_density"]].merge(fscores, on="feature")


def by_bucket(current: pd.DataFrame, fscores: pd.DataFrame, densities: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per density bucket of one SAE: the team's interpretable fraction (k of n, Wilson interval)
    beside the mean automatic score of every scored feature and the fraction at or above
    `threshold` (the extrapolation, over all scored features), with the AUC where the bucket
    has MIN_PER_CLASS features of each verdict. `densities`: (feature, log10_density) of the SAE."""
    verdicts = feature_verdicts(current)
    verdicts = verdicts.assign(bucket=verdicts["log10_density"].map(density_bucket))
    scored = fscores.merge(densities[["feature", "log10_density"]], on="feature", how="left")
    scored = scored.assign(bucket=scored["log10_density"].map(density_bucket))
    both = verdicts[["feature", "interpretable", "bucket"]].merge(fscores, on="feature")  # as judged_and_scored
    rows = []
    for b in bucket_order():
        v, s, j = verdicts[verdicts["bucket"] == b], scored[scored["bucket"] == b], both[both["bucket"] == b]
        if v.empty and s.empty:
            continue
        k, n = int(v["interpretable"].sum()), len(v)
        passed, n_scored = int((s["score"] >= threshold).sum()), len(s)
        pos, neg = j[j["interpretable"]]["score"], j[~j["interpretable"]]["score"]
        enough = len(pos) >= MIN_PER_CLASS and len(neg) >= MIN_PER_CLASS
        auc = roc_auc(pos, neg) if enough else (math.nan, math.nan, math.nan)
        rows.append(
            {
                "bucket": b,
                "n_judged": n,
                "interpretable": k,
                "frac": k / n if n else math.nan,
                "lo": wilson(k, n)[0] if n else math.nan,
                "hi": wilson(k, n)[1] if n else math.nan,
                "n_scored": n_scored,
                "mean_score": float(s["score"].mean()) if n_scored else math.nan,
                "passing": passed,
                "pass_frac": passed / n_scored if n_scored else math.nan,
                "pass_lo": wilson(passed, n_scored)[0] if n_scored else math.nan,
                "pass_hi": wilson(passed, n_scored)[1] if n_scored else math.nan,
                "n_both": len(j),
                "auc": auc[0],
                "auc_lo": auc[1],
                "auc_hi": auc[2],
            }
        )
    return pd.DataFrame(rows)


def overall(current: pd.DataFrame, fscores: pd.DataFrame) -> dict:
    """AUC with its interval and the best threshold over every feature with a verdict and a score."""
    both = judged_and_scored(current, fscores)
    pos, neg = both[both["interpretable"]]["score"], both[~both["interpretable"]]["score"]
    auc, lo, hi = roc_auc(pos, neg)
    thr, j = best_threshold(both["score"], both["interpretable"])
    return {"n": len(both), "n_pos": len(pos), "n_neg": len(neg), "auc": auc, "lo": lo, "hi": hi, "best": thr, "j": j}


def disagreements(current: pd.DataFrame, fscores: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Features the team calls interpretable that score below `threshold`, and the reverse,
    those farthest from the threshold first."""
    both = judged_and_scored(current, fscores)
    said = both["score"] >= threshold
    out = both[said != both["interpretable"]].assign(
        team=lambda d: np.where(d["interpretable"], "interpretable", "not interpretable"),
        automatic=lambda d: np.where(d["score"] >= threshold, "passes", "fails"),
        distance=lambda d: (d["score"] - threshold).abs(),
    )
    return out.sort_values(["distance", "feature"], ascending=[False, True])[
        ["feature", "team", "score", "automatic", "log10_density"]
    ].reset_index(drop=True)
