"""The Layer page's list of features (preset, density range, firing threshold, sort, rows per
page) as URL parameters, read the same way by the Layer page and by a Feature page opened from
it, so that "previous" and "next" walk that list and "back" returns to the page of it that holds
the feature. The list itself is filtered, sorted and paged in DuckDB (backend.store.feature_lists)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.errors import UserError
from backend.store.feature_lists import ListSpec
from ui import common

PRESETS = ["all", "dead", "ultralow", "dense"]
FIRING_LABELS = {"any": "any nonzero activation", "1pct": "≥ 1% of its max", "10pct": "≥ 10% of its max"}
SORTS = {
    "density ↓": ("density", False),
    "density ↑": ("density", True),
    "max act ↓": ("max_act", False),
    "feature": ("feature", True),
}
PAGE_ROWS = (50, 200, 1000)
"""rows per page of the Layer table: one page at a time goes to the browser"""
PARAMS = ("filter", "lo", "hi", "fire", "sort", "rows", "page")


@dataclass(frozen=True)
class FeatureList:
    preset: str = "all"
    lo: float | None = None
    hi: float | None = None
    firing: str = "any"
    sort: str = "density ↓"
    rows: int = 200

    @classmethod
    def from_url(cls) -> FeatureList:
        preset = common.param("filter") or "all"
        if preset not in PRESETS:
            raise UserError(f"URL parameter filter={preset!r}: use one of {', '.join(PRESETS)}")
        lo, hi = common.float_param("lo"), common.float_param("hi")
        if lo is not None and hi is not None and lo > hi:
            raise UserError(f"URL parameters lo={lo} > hi={hi}: the density range is empty")
        firing = common.param("fire") or "any"
        if firing not in FIRING_LABELS:
            raise UserError(f"URL parameter fire={firing!r}: use one of {', '.join(FIRING_LABELS)}")
        sort = common.param("sort") or "density ↓"
        if sort not in SORTS:
            raise UserError(f"URL parameter sort={sort!r}: use one of {', '.join(SORTS)}")
        rows = common.int_param("rows") or 200
        if rows not in PAGE_ROWS:
            raise UserError(f"URL parameter rows={rows}: use one of {', '.join(map(str, PAGE_ROWS))}")
        return cls(preset, lo, hi, firing, sort, rows)

    def params(self) -> dict:
        """The URL parameters that say this list (defaults left out)."""
        out = {"filter": self.preset, "lo": self.lo, "hi": self.hi, "fire": self.firing, "sort": self.sort}
        out["rows"] = self.rows
        defaults = {"filter": "all", "fire": "any", "sort": "density ↓", "rows": 200}
        return {k: v for k, v in out.items() if v is not None and defaults.get(k) != v}

    def spec(self) -> ListSpec:
        col, ascending = SORTS[self.sort]
        return ListSpec(self.preset, self.lo, self.hi, self.firing, col, ascending)

    def describe(self) -> str:
        parts = [] if self.preset == "all" else [self.preset]
        if self.lo is not None or self.hi is not None:
            lo, hi = self.lo if self.lo is not None else "-∞", self.hi if self.hi is not None else 0
            parts.append(f"log10 density in [{lo}, {hi}]")
        if self.firing != "any":
            parts.append(f"firing {FIRING_LABELS[self.firing]}")
        parts.append(f"sorted by {self.sort}")
        return ", ".join(parts)


def opened_from_list() -> bool:
    """Whether this Feature page was opened from a Layer list (`list=layer` in its URL)."""
    return common.param("list") == "layer"
