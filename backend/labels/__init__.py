"""Labels: the store (SQLite or PostgreSQL), import/export, agreement statistics, the queue."""

from backend.labels.agreement import agreement, disagreements, interpretability_by_bucket, wilson
from backend.labels.io import export_labels, import_labels, import_table, read_table, to_bytes
from backend.labels.store import (
    COLUMNS,
    VERDICTS,
    Label,
    add,
    add_rows,
    all_labels,
    describe,
    feature_status,
    history,
    latest,
    location,
    search_descriptions,
)

__all__ = [
    "COLUMNS",
    "VERDICTS",
    "Label",
    "add",
    "add_rows",
    "agreement",
    "all_labels",
    "describe",
    "disagreements",
    "export_labels",
    "feature_status",
    "history",
    "import_labels",
    "import_table",
    "interpretability_by_bucket",
    "latest",
    "location",
    "read_table",
    "search_descriptions",
    "to_bytes",
    "wilson",
]
