"""The feature database's layout: schema.sql, its version, and the check every reader makes."""

from __future__ import annotations

import enum
from pathlib import Path

import duckdb

from backend.errors import UserError

SCHEMA = Path(__file__).with_name("schema.sql").read_text()
VERSION = "12"
"""Bumped whenever a table or column changes; files of another version are refused by name."""

SAE_TABLES = (
    "examples",
    "features",
    "token_effects",
    "neighbours",
    "position_error",
    "density_hist",
    "feature_diagnostics",
    "sae_diagnostics",
    "steering",
    "steering_summary",
)
DERIVED_SAE_TABLES = ("examples_by_seq",)
"""per-SAE tables RunWriter.finish derives from the ones above (for search), never handed over"""
PROPAGATION_TABLES = ("propagation", "propagation_recon", "splice_output", "splice_context")
RUN_TABLES = ("sequences", "sequence_text", "vocab", *PROPAGATION_TABLES)

_REQUIRED = {
    "runs": {"run_id", "status", "model", "corpus", "n_tokens"},
    "saes": {"run_id", "sae", "hook", "depth", "d_sae", "explained_variance", "train_context", "ev_beyond", "grp"},
    "features": {"sae", "feature", "count", "density", "max_act", "hist", "count_ge_1pct", "count_ge_10pct"},
    "examples": {"sae", "feature", "kind", "quantile", "seq", "pos", "ctx_start", "acts"},
    "examples_by_seq": {"seq", "sae", "feature", "rank", "pos", "ctx_start", "value", "token_id"},
    "sequence_text": {"run_id", "seq", "text"},
    "propagation": {"run_id", "sae", "hook", "resid_change"},
    "feature_diagnostics": {"sae", "feature", "map_x", "tail_cos", "pos_corr", "anti_partner", "pos_kl", "pos_fire"},
    "sae_diagnostics": {"sae", "map_method", "tail_cut", "pos_width", "pos_tokens"},
    "splice_output": {"run_id", "sae", "mode", "metric", "clean", "spliced", "cosine", "draws"},
    "splice_context": {"run_id", "sae", "ctx_lo", "ctx_hi", "increase"},
    "steering": {"sae", "feature", "estimate", "exact_plus", "exact_minus", "pick"},
    "steering_summary": {"sae", "hurt_plus", "spearman"},
}


class RunStatus(enum.StrEnum):
    """`runs.status`: a run's rows are visible to readers only once it is COMPLETE."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """stopped by Ctrl-C; the same command restarts it cleanly"""


COMPLETE = f"r.status = '{RunStatus.COMPLETE}'"
"""the SQL condition every read of a run's tables joins on (runs aliased r)"""


class ExampleKind(enum.IntEnum):
    """`examples.kind`: how an example was chosen."""

    TOP = 0
    """among the feature's top activations (rank 0 = highest)"""
    QUANTILE = 1
    """sampled uniformly from its activations, then cut into activation quantiles"""


def problem(con: duckdb.DuckDBPyConnection) -> str | None:
    """Why this open DuckDB file is not a feature database this version reads, or None."""
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
    ).fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    if not columns:
        return "it is empty (no tables)"
    if "runs" not in columns or "saes" not in columns:
        return f"it has tables {', '.join(sorted(columns)[:6])} but no `runs` or `saes`: not a feature database"
    version = None
    if "meta" in columns:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None
    if version != VERSION:
        age = "an older" if version is None or version < VERSION else "a newer"
        return (
            f"it was written by {age} version of this tool "
            f"(layout {version or '1'}, this one reads {VERSION}); rebuild it with the same precompute command"
        )
    for table, needed in _REQUIRED.items():
        missing = needed - columns.get(table, set())
        if missing:
            return f"its table `{table}` lacks column(s) {', '.join(sorted(missing))}"
    return None


def check(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    why = problem(con)
    if why:
        raise UserError(f"{Path(path).name} is not a feature database this dashboard can read: {why}")
