"""Turning a finished pass's statistics into the rows of the feature database's tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from backend.density import FIRING_THRESHOLDS, counts_at_least, log_density_histogram
from backend.engine.models import hook_depth
from backend.engine.saes import LoadedSAE
from backend.engine.stats import ContextMetrics, FeatureStats, LayerMetrics


def examples_table(name: str, st: FeatureStats) -> pa.Table:
    """Examples as Arrow, the context activations a list column built from one flat buffer
    (a pandas column of per-row arrays is what made this write slow)."""
    spec = st.spec
    ex = st.examples()
    order = np.lexsort((ex["rank"], ex["quantile"], ex["kind"], ex["feature"]))
    ex = {k: v[order] for k, v in ex.items()}
    seq = ex["token"] // spec.seq_len
    pos = ex["token"] % spec.seq_len
    start = np.maximum(pos - spec.left, 0)
    stop = np.minimum(pos + spec.right + 1, spec.seq_len)
    # Window column j holds position pos - left + j; keep the columns inside the sequence.
    lo = start - (pos - spec.left)
    j = np.arange(spec.window)
    inside = (j >= lo[:, None]) & (j < (lo + stop - start)[:, None])
    offsets = np.concatenate([[0], np.cumsum(stop - start)]).astype(np.int32)
    acts = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ex["win"][inside].astype(np.float32)))
    n = len(seq)
    return pa.table(
        {
            "sae": pa.array([name] * n, pa.string()),
            "feature": ex["feature"].astype(np.int32),
            "kind": ex["kind"].astype(np.int8),
            "rank": ex["rank"].astype(np.int16),
            "quantile": ex["quantile"].astype(np.int8),
            "seq": seq.astype(np.int32),
            "pos": pos.astype(np.int16),
            "ctx_start": start.astype(np.int16),
            "value": ex["value"].astype(np.float32),
            "acts": acts,
        }
    )


@dataclass(frozen=True)
class SaeRow(LayerMetrics, ContextMetrics):
    """One row of the `saes` table; the fields are its columns (see schema.sql), the quality
    figures among them inherited from stats.LayerMetrics and stats.ContextMetrics, where they are
    computed."""

    run_id: str
    sae: str
    hook: str
    depth: float
    source: str
    architecture: str
    d_in: int
    d_sae: int
    sae_config: str
    downstream_metric: str | None
    downstream_value: float | None
    downstream_clean: float | None
    downstream_spliced: float | None
    downstream_ablated: float | None
    downstream_cosine: float | None
    effect_kind: str
    hist_lo: float
    hist_hi: float
    context_left: int
    context_right: int
    train_context: int | None
    grp: int
    """the precompute of the run that measured this SAE (0, then one more per --append)"""


def train_context(s: LoadedSAE, fallback: int | None) -> int | None:
    """The context length an SAE was trained on: sae_lens's cfg.metadata.context_size where the
    SAE records it, else the run's --sae-context."""
    own = getattr(s.sae.cfg.metadata, "context_size", None)
    return int(own) if own else fallback


def sae_row(
    run_id: str,
    name: str,
    s: LoadedSAE,
    st: FeatureStats,
    ds: dict,
    effect_kind: str,
    context: int | None = None,
    group: int = 0,
) -> SaeRow:
    cfg = s.sae.cfg
    m: LayerMetrics = st.layer_metrics()
    return SaeRow(
        run_id=run_id,
        sae=name,
        hook=s.hook,
        depth=hook_depth(s.hook),
        source=s.source,
        architecture=cfg.architecture(),
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        sae_config=json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else {}, default=str),
        **asdict(m),
        **asdict(st.context_metrics(context)),
        train_context=context,
        downstream_metric=ds["metric"],
        downstream_value=ds["value"],
        downstream_clean=ds["clean"],
        downstream_spliced=ds["spliced"],
        downstream_ablated=ds["ablated"],
        downstream_cosine=ds["cosine"],
        effect_kind=effect_kind,
        hist_lo=st.spec.hist_lo,
        hist_hi=st.spec.hist_hi,
        context_left=st.spec.left,
        context_right=st.spec.right,
        grp=group,
    )


def features_frame(name: str, st: FeatureStats) -> pd.DataFrame:
    ft = st.feature_table()
    spec = st.spec
    at_least = {
        f"count_ge_{key}": counts_at_least(ft["hist"], ft["max_act"], rel, spec.hist_lo, spec.hist_hi)
        for key, rel in FIRING_THRESHOLDS.items()
        if rel > 0
    }
    return pd.DataFrame(
        {
            "sae": name,
            "feature": ft["feature"],
            "count": ft["count"],
            "density": ft["density"],
            "mean_act": ft["mean_act"],
            "max_act": ft["max_act"],
            "hist": list(ft["hist"].astype(np.int32)),
            **at_least,
        }
    )


def position_error_frame(name: str, st: FeatureStats) -> pd.DataFrame:
    n = st.pos_n.cpu().numpy()
    keep = n > 0
    sse, x2 = st.pos_sse.cpu().numpy()[keep], st.pos_x2.cpu().numpy()[keep]
    return pd.DataFrame(
        {
            "sae": name,
            "pos": np.nonzero(keep)[0].astype(np.int32),
            "n": n[keep],
            "mse": sse / n[keep],
            "rel_error": sse / np.maximum(x2, 1e-30),
        }
    )


def density_hist_frame(name: str, density: np.ndarray) -> pd.DataFrame:
    if not (np.asarray(density) > 0).any():
        return pd.DataFrame(columns=["sae", "bin_lo", "bin_hi", "n"])
    counts, edges = log_density_histogram(density)
    return pd.DataFrame({"sae": name, "bin_lo": edges[:-1], "bin_hi": edges[1:], "n": counts.astype(np.int32)})


def diagnostics_frames(
    name: str,
    s: LoadedSAE,
    st: FeatureStats,
    density: np.ndarray,
    tail_below: float | None,
    seed: int = 0,
    map_method: str = "umap",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of `feature_diagnostics` and `sae_diagnostics` for one SAE (engine.clusters)."""
    from backend.density import resolution_floor
    from backend.engine import clusters
    from backend.positions import position_kl

    xy, method = clusters.feature_map(s.sae.W_dec, seed, map_method)
    cut = tail_below if tail_below else clusters.tail_cut(density, resolution_floor(max(st.n_tokens, 1)))
    tail = clusters.tail_direction(s.sae.W_enc, density, cut)
    partner, anti = clusters.antipodal(s.sae.W_dec, density)
    fire, act, tokens = st.position_profile()
    per_feature = pd.DataFrame(
        {
            "sae": name,
            "feature": np.arange(len(density), dtype=np.int32),
            "map_x": xy[:, 0],
            "map_y": xy[:, 1],
            "tail_cos": tail.cosine,
            "pos_corr": st.position_correlation().astype(np.float32),
            "anti_partner": pd.array(np.where(partner >= 0, partner, None), dtype="Int32"),
            "anti_cos": anti,
            "pos_kl": position_kl(fire, tokens).astype(np.float32),
            "pos_fire": list(fire.astype(np.int64)),
            "pos_act": list(act.astype(np.float32)),
        }
    )
    per_sae = pd.DataFrame(
        [
            {
                "sae": name,
                "map_method": method,
                "tail_cut": float(cut),
                "tail_auto": not tail_below,
                "tail_n": tail.n,
                "tail_share": tail.share,
                "pos_width": st.spec.pos_width,
                "pos_tokens": tokens.astype(np.int64).tolist(),
            }
        ]
    )
    return per_feature, per_sae
