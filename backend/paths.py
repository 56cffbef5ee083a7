"""Where things live on disk: one answer for the app and the CLI alike."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "data"


def data_dir() -> Path:
    """The folder of feature databases (and, by default, the labels store): SAE_DASHBOARD_DATA,
    else data/ in the current directory."""
    return Path(os.environ.get("SAE_DASHBOARD_DATA") or DEFAULT_DATA)


def cache_dir() -> Path:
    """Derived files worth keeping between runs (the embedded corpus's parsed documents):
    SAE_DASHBOARD_CACHE, else $XDG_CACHE_HOME/sae-dashboard, else ~/.cache/sae-dashboard."""
    if os.environ.get("SAE_DASHBOARD_CACHE"):
        return Path(os.environ["SAE_DASHBOARD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae-dashboard"
