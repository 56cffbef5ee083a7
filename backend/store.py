"""Writes to the feature database; the schema lives in schema.sql beside this file.

The write connection is held only for moments (mark a run running, write a finished run in
one transaction, mark it failed), so readers can open the file between those moments and
a crash can never leave half a run visible.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from backend.errors import UserError

SCHEMA = (Path(__file__).with_name("schema.sql")).read_text()

# Tables keyed by SAE, and tables keyed by run, in the order rows are inserted.
SAE_TABLES = ("examples", "features", "token_effects", "neighbours", "position_error", "density_hist")
RUN_TABLES = ("sequences", "vocab")

# The three tokens a feature's top examples fire on most often, for tables and search.
_TOP_TOKENS = """
WITH hits AS (
    SELECT e.sae, e.feature, s.tokens[e.pos + 1] AS token_id, count(*) AS n
    FROM examples e JOIN sequences s ON s.run_id = $run AND s.seq = e.seq
    WHERE e.kind = 0 AND e.sae IN (SELECT unnest($saes::VARCHAR[]))
    GROUP BY ALL),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY sae, feature ORDER BY n DESC, token_id) AS r FROM hits)
SELECT k.sae, k.feature, string_agg(v.token, ' | ' ORDER BY k.r) AS top_tokens
FROM ranked k JOIN vocab v ON v.run_id = $run AND v.token_id = k.token_id
WHERE k.r <= 3 GROUP BY ALL
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def connect_write(path: str | Path) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as e:
        raise UserError(
            f"cannot open {path} for writing ({str(e).splitlines()[0]}); is another process using it?"
        ) from None
    con.execute(SCHEMA)
    return con


def run_status(path: str | Path, run_id: str) -> str | None:
    if not Path(path).exists():
        return None
    with connect_write(path) as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return row[0] if row else None


def begin_run(path: str | Path, run_id: str, meta: dict, force: bool = False) -> None:
    """Register a run as running. A finished run with the same id is kept unless `force`;
    an unfinished one (crash, Ctrl-C) is cleared and restarted, so rows never duplicate."""
    with connect_write(path) as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row and row[0] == "complete" and not force:
            raise UserError(f"run {run_id!r} is already complete in {path}; pass --force to recompute it")
        con.execute("BEGIN")
        _delete_run(con, run_id)
        con.execute(
            "INSERT INTO runs (run_id, status, model, model_kind, corpus, context_len, dtype, device,"
            " config, versions, started_at) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                meta["model"],
                meta["model_kind"],
                meta["corpus"],
                meta["context_len"],
                meta["dtype"],
                meta["device"],
                json.dumps(meta["config"]),
                json.dumps(meta["versions"]),
                now(),
            ],
        )
        con.execute("COMMIT")


def _delete_run(con, run_id: str) -> None:
    saes = [r[0] for r in con.execute("SELECT sae FROM saes WHERE run_id = ?", [run_id]).fetchall()]
    for t in SAE_TABLES:
        con.execute(f"DELETE FROM {t} WHERE sae IN (SELECT unnest(?::VARCHAR[]))", [saes])
    con.execute("DELETE FROM saes WHERE run_id = ?", [run_id])
    for t in RUN_TABLES:
        con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
    con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])


@contextmanager
def running(path: str | Path, run_id: str, meta: dict, force: bool = False):
    """Register the run, and mark it interrupted (Ctrl-C) or failed if the body raises."""
    begin_run(path, run_id, meta, force=force)
    try:
        yield
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        mark_run(path, run_id, status, f"{type(e).__name__}: {e}"[:500])
        raise


def mark_run(path: str | Path, run_id: str, status: str, error: str | None = None) -> None:
    with connect_write(path) as con:
        con.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?", [status, error, now(), run_id]
        )


def unique_sae_names(path: str | Path, run_id: str, names: list[str]) -> list[str]:
    """Names already used by another run in this file get an `@run_id` suffix."""
    with connect_write(path) as con:
        taken = {r[0] for r in con.execute("SELECT sae FROM saes WHERE run_id <> ?", [run_id]).fetchall()}
    return [f"{n}@{run_id}" if n in taken else n for n in names]


def finish_run(
    path: str | Path,
    run_id: str,
    run_fields: dict,
    saes: pd.DataFrame,
    tables: dict[str, pd.DataFrame | pa.Table],
    sequences_parquet: str | None,
) -> None:
    """Write everything a run computed and mark it complete, atomically."""
    with connect_write(path) as con:
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM saes WHERE run_id = ?", [run_id])
            con.register("saes_df", saes)
            cols = ", ".join(saes.columns)
            con.execute(f"INSERT INTO saes ({cols}) SELECT {cols} FROM saes_df")
            con.unregister("saes_df")
            for name in RUN_TABLES + SAE_TABLES:
                if name == "features":
                    df = tables["features"]
                    con.register("tmp_df", df)
                    con.execute(
                        f"""INSERT INTO features SELECT f.sae, f.feature, f.count, f.density, f.mean_act,
                                    f.max_act, f.hist, t.top_tokens FROM tmp_df f
                                    LEFT JOIN ({_TOP_TOKENS}) t ON t.sae = f.sae AND t.feature = f.feature
                                    ORDER BY f.sae, f.feature""",
                        {"run": run_id, "saes": list(saes["sae"])},
                    )
                    con.unregister("tmp_df")
                    continue
                if name == "sequences" and sequences_parquet is not None:
                    con.execute(
                        "INSERT INTO sequences SELECT ?, seq, tokens FROM read_parquet(?) ORDER BY seq",
                        [run_id, sequences_parquet],
                    )
                    continue
                df = tables.get(name)
                if df is None or len(df) == 0:
                    continue
                con.register("tmp_df", df)
                cols = ", ".join(df.column_names if isinstance(df, pa.Table) else df.columns)
                con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM tmp_df")
                con.unregister("tmp_df")
            sets = ", ".join(f"{k} = ?" for k in run_fields)
            con.execute(
                f"UPDATE runs SET {sets}, status = 'complete', finished_at = ?, error = NULL WHERE run_id = ?",
                [*run_fields.values(), now(), run_id],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
