"""One SAE's features as a list: a preset, a log10-density range, a firing threshold and a sort,
filtered, ordered and paged in DuckDB.

Why in the database: an SAE of a million features is a million rows. The Layer page sends one
page of them to the browser, and a Feature page opened from the list looks up only its place in
it and its neighbours, so neither holds the whole SAE in pandas. The rules are density.py's
(dense, ultralow, log10 with dead features NaN); tests hold this module to them row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from backend.density import DENSE, FIRING_THRESHOLDS, ULTRALOW, log10_density
from backend.errors import UserError
from backend.store.queries import _df, cached, count_column, sae_row

PRESETS = ("all", "dead", "ultralow", "dense")
SORT_COLUMNS = ("density", "max_act", "feature")
COLUMNS = ["feature", "count", "density", "mean_act", "max_act", "top_tokens", "log10_density"]


@dataclass(frozen=True)
class ListSpec:
    """Which features, in which order: `preset` (PRESETS), log10 density in [lo, hi] (either
    open), `firing` (density.FIRING_THRESHOLDS: what counts as active, so count and density
    follow it), sorted by `sort` (SORT_COLUMNS) ascending or not, ties by feature id."""

    preset: str = "all"
    lo: float | None = None
    hi: float | None = None
    firing: str = "any"
    sort: str = "density"
    ascending: bool = False

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UserError(f"unknown filter {self.preset!r}: use {', '.join(PRESETS)}")
        if self.firing not in FIRING_THRESHOLDS:
            raise UserError(f"firing threshold {self.firing!r}: use one of {', '.join(FIRING_THRESHOLDS)}")
        if self.sort not in SORT_COLUMNS:
            raise UserError(f"sort {self.sort!r}: use one of {', '.join(SORT_COLUMNS)}")


def _listed(spec: ListSpec, sae: str, n_tokens: int) -> tuple[str, list]:
    """A subquery of the SAE's listed features with `count`,
    `density` and `log10_density` as `spec.firing` counts them, and `i`, its place in the order."""
    count = count_column(spec.firing)
    # density.density: count / max(tokens, 1), the same float division; dead features: log10 NULL
    dens = "density" if spec.firing == "any" else f"{count} / ?::DOUBLE"
    where, params = [], [] if spec.firing == "any" else [float(max(int(n_tokens), 1))]
    if spec.preset == "dead":
        where.append("count = 0")
    elif spec.preset == "ultralow":
        where.append(f"count > 0 AND density < {ULTRALOW!r}")
    elif spec.preset == "dense":
        where.append(f"density > {DENSE!r}")
    if spec.lo is not None:
        where.append("log10_density >= ?")
    if spec.hi is not None:
        where.append("log10_density <= ?")
    extra = [v for v in (spec.lo, spec.hi) if v is not None]
    order = f"{spec.sort} {'ASC' if spec.ascending else 'DESC'}, feature"
    sql = f"""
        SELECT *, row_number() OVER (ORDER BY {order}) - 1 AS i FROM (
            SELECT feature, count, density, mean_act, max_act, top_tokens,
                   CASE WHEN density > 0 THEN log10(density) END AS log10_density
            FROM (SELECT feature, {count} AS count, {dens} AS density, mean_act, max_act, top_tokens
                  FROM features WHERE sae = ?)
        ) {"WHERE " + " AND ".join(where) if where else ""}"""
    return sql, params + [sae] + extra


@cached
def count(path: str, sae: str, spec: ListSpec) -> int:
    """How many features the list holds."""
    sql, params = _listed(spec, sae, sae_row(path, sae).n_tokens)
    return int(_df(path, f"SELECT count(*) AS n FROM ({sql})", params)["n"].iloc[0])


@cached
def page(path: str, sae: str, spec: ListSpec, offset: int, limit: int) -> pd.DataFrame:
    """Rows offset .. offset + limit of the list, in its order (COLUMNS)."""
    sql, params = _listed(spec, sae, sae_row(path, sae).n_tokens)
    df = _df(path, f"SELECT * FROM ({sql}) WHERE i >= ? AND i < ? ORDER BY i", params + [offset, offset + limit])
    # the page's log10 as density.log10_density computes it (NaN for dead), not DuckDB's
    df["log10_density"] = log10_density(df["density"].to_numpy())
    return df[COLUMNS].reset_index(drop=True)


@cached
def around(path: str, sae: str, spec: ListSpec, f: int) -> tuple[int | None, int | None, int | None, int]:
    """(feature f's place in the list, the feature before it, the one after it, the list's
    length); the first three None where they do not exist."""
    sql, params = _listed(spec, sae, sae_row(path, sae).n_tokens)
    df = _df(
        path,
        f"""WITH l AS ({sql}), me AS (SELECT i FROM l WHERE feature = ?)
            SELECT l.i, l.feature, me.i AS at, (SELECT count(*) FROM l) AS n
            FROM me, l WHERE l.i BETWEEN me.i - 1 AND me.i + 1""",
        params + [int(f)],
    )
    if df.empty:
        return None, None, None, count(path, sae, spec)
    at, n = int(df["at"].iloc[0]), int(df["n"].iloc[0])
    by_i = dict(zip(df["i"].astype(int), df["feature"].astype(int)))
    return at, by_i.get(at - 1), by_i.get(at + 1), n
