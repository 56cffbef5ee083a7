"""Typed rows of the read side: what pages get for one SAE, one feature and one SAE's density
diagnostics, with the columns' types fixed here (a renamed column fails at the read, not in a
page). Built from a query's row by `from_row`; see schema.sql for what each column means."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np


def _value(v, kind, optional: bool):
    """A column's value as its field's type; NULL (None or NaN) stays None where the field allows it."""
    missing = v is None or (isinstance(v, float) and math.isnan(v))
    if missing and optional:
        return None
    if kind is int:
        return int(v)
    if kind is float:
        return float("nan") if v is None else float(v)
    if kind is bool:
        return bool(v)
    return v


class _Row:
    @classmethod
    def from_row(cls, row: dict):
        out = {}
        for f in fields(cls):
            kind = str(f.type)
            base = {"int": int, "float": float, "bool": bool}.get(kind.replace(" | None", ""))
            out[f.name] = _value(row.get(f.name), base, kind.endswith("| None"))
        return cls(**out)


@dataclass(frozen=True)
class SaeInfo(_Row):
    """One complete SAE (queries.sae_row)."""

    run_id: str
    sae: str
    hook: str
    depth: float
    architecture: str
    d_in: int
    d_sae: int
    n_tokens: int
    l0: float
    explained_variance: float
    n_dead: int
    n_dense: int
    downstream_metric: str | None
    downstream_value: float | None
    effect_kind: str
    hist_lo: float
    hist_hi: float
    train_context: int | None
    model: str
    corpus: str
    context_len: int


@dataclass(frozen=True)
class FeatureInfo(_Row):
    """One feature's row of `features` (queries.feature); `hist` as an int64 array."""

    sae: str
    feature: int
    count: int
    density: float
    mean_act: float
    max_act: float
    hist: np.ndarray
    count_ge_1pct: int
    count_ge_10pct: int
    top_tokens: str | None


@dataclass(frozen=True)
class SaeDiagnostics(_Row):
    """One SAE's row of `sae_diagnostics` (queries.sae_diagnostics)."""

    sae: str
    map_method: str
    tail_cut: float
    tail_auto: bool
    tail_n: int
    tail_share: float | None
    pos_width: int
    pos_tokens: np.ndarray
    """counted tokens per bucket of `pos_width` positions (positions.py)"""
