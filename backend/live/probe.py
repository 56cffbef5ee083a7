"""Probe: which features fire on text a user writes, with every SAE of the run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from backend.live.model import Live


@dataclass
class SaeCodes:
    """One SAE's nonzero codes on the text: token position, feature, value (counted tokens only)."""

    pos: np.ndarray
    feature: np.ndarray
    value: np.ndarray
    d_sae: int

    def feature_acts(self, f: int, n_tokens: int) -> np.ndarray:
        out = np.zeros(n_tokens, dtype=np.float32)
        sel = self.feature == f
        out[self.pos[sel]] = self.value[sel]
        return out

    def table(self) -> pd.DataFrame:
        """Per feature that fired: its max and sum over the text, and on how many tokens."""
        if len(self.feature) == 0:
            return pd.DataFrame({"feature": [], "max": [], "sum": [], "tokens": []})
        df = pd.DataFrame({"feature": self.feature, "value": self.value})
        g = df.groupby("feature")["value"]
        return pd.DataFrame({"max": g.max(), "sum": g.sum(), "tokens": g.size()}).reset_index()


@dataclass
class Probe:
    text: str
    tokens: list[str]
    counted: np.ndarray
    codes: dict[str, SaeCodes]


def probe(live: Live, text: str) -> Probe:
    """Run the model once on the text and encode its activations with every SAE (cached per text)."""
    return live.cached(("probe", text), lambda: _probe(live, text))


def _probe(live: Live, text: str) -> Probe:
    tokens, counted, strings = live.tokenize(text)
    hooks = sorted({s.hook for s in live.saes.values()})
    out = {}
    with live.using() as adapter:
        acts = adapter.activations(tokens, hooks)
        keep = torch.as_tensor(counted, device=tokens.device)
        for name, s in live.saes.items():
            codes = s.sae.encode(acts[s.hook].to(s.sae.dtype))[0].float()
            codes = codes * keep[:, None].to(codes.device)
            pos, feat = torch.nonzero(codes > 0, as_tuple=True)
            out[name] = SaeCodes(pos.cpu().numpy(), feat.cpu().numpy(), codes[pos, feat].cpu().numpy(), s.sae.cfg.d_sae)
    return Probe(text, strings, counted, out)


def top_features(p: Probe, sae: str, by: str = "max", n: int = 20, hide: set[int] | None = None) -> pd.DataFrame:
    """The features that fire most on the text, by their max or their sum over it."""
    t = p.codes[sae].table()
    if hide:
        t = t[~t["feature"].isin(hide)]
    return t.sort_values([by, "feature"], ascending=[False, True]).head(n).reset_index(drop=True)
