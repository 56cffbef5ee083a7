"""Writes to the feature database; its layout is schema.sql beside this file.

The write connection is held only for moments (mark a run running, write a finished run in
one transaction, mark it failed), so readers can open the file between those moments and
a crash can never leave half a run visible.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from backend.errors import UserError
from backend.store import corpus_text
from backend.store.schema import (
    DERIVED_SAE_TABLES,
    PROPAGATION_TABLES,
    RUN_TABLES,
    SAE_TABLES,
    SCHEMA,
    VERSION,
    ExampleKind,
    RunStatus,
    problem,
)

log = logging.getLogger(__name__)

LOCK_WAIT_S = 60.0
"""how long a writer waits for readers (a dashboard holding the file open) to let go"""

WRITE_MEMORY_ENV = "SAE_DASHBOARD_WRITE_MEMORY"
WRITE_MEMORY = "4GB"
"""DuckDB's memory_limit for the write connection (WRITE_MEMORY_ENV overrides it). DuckDB's own
default is 80% of the machine: a Gemma-scale run's one write transaction grew the process to
19.8 GB of a 24 GB host. Past the limit DuckDB spills to `<database>.tmp` beside the file."""

# The three tokens a feature's top examples fire on most often, for tables and search. It reads
# `examples`, `sequences` and `vocab`, so `features` is written after those (see RunWriter.finish).
TOP_TOKENS = f"""
WITH hits AS (
    SELECT e.sae, e.feature, s.tokens[e.pos + 1] AS token_id, count(*) AS n
    FROM examples e JOIN sequences s ON s.run_id = $run AND s.seq = e.seq
    WHERE e.kind = {int(ExampleKind.TOP)} AND e.sae IN (SELECT unnest($saes::VARCHAR[]))
    GROUP BY ALL),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY sae, feature ORDER BY n DESC, token_id) AS r FROM hits)
SELECT k.sae, k.feature, string_agg(v.token, ' | ' ORDER BY k.r) AS top_tokens
FROM ranked k JOIN vocab v ON v.run_id = $run AND v.token_id = k.token_id
WHERE k.r <= 3 GROUP BY ALL
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_path(path: str | Path) -> Path:
    """A database path we can write, its folder created: checked before any long work."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder for {path}: {e.strerror or e}") from None
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a database file path such as data/features.duckdb")
    return path


def connect_write(path: str | Path, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open for writing, creating the file with our schema; waits while a reader (the dashboard)
    holds it, since it lets go of idle files within seconds (queries.IDLE_CLOSE_S)."""
    path = check_path(path)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            con = duckdb.connect(str(path))
            break
        except duckdb.IOException as e:
            first = str(e).splitlines()[0]
            if "lock" not in first.lower():
                raise UserError(f"cannot open {path} as a DuckDB database ({first})") from None
            if time.monotonic() > deadline:
                raise UserError(f"cannot open {path} for writing ({first}); is another process using it?") from None
            if not told:
                log.warning("%s is open in another process (the dashboard?); waiting for it to let go", path)
                told = True
            time.sleep(0.25)
        except duckdb.Error as e:
            raise UserError(f"cannot open {path} as a DuckDB database ({str(e).splitlines()[0]})") from None
    fresh = not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main'").fetchone()[0]
    if not fresh:
        why = problem(con)
        if why:
            con.close()
            raise UserError(f"{path} cannot take a run: {why}")
    limit = os.environ.get(WRITE_MEMORY_ENV) or WRITE_MEMORY
    try:
        con.execute(f"SET memory_limit = '{limit.replace(chr(39), '')}'")
    except duckdb.Error as e:
        con.close()
        raise UserError(
            f"{WRITE_MEMORY_ENV}={limit!r} is not a memory size DuckDB reads, e.g. 4GB ({str(e).splitlines()[0]})"
        ) from None
    con.execute(SCHEMA)
    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [VERSION])
    return con


def begin_run(path: str | Path, run_id: str, meta: dict, force: bool = False) -> None:
    """Register a run as running. A finished run with the same id is kept unless `force`;
    an unfinished one (crash, Ctrl-C) is cleared and restarted, so rows never duplicate."""
    with connect_write(path) as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row and row[0] == RunStatus.COMPLETE and not force:
            raise UserError(f"run {run_id!r} is already complete in {path}; pass --force to recompute it")
        con.execute("BEGIN")
        _delete_run(con, run_id)
        con.execute(
            "INSERT INTO runs (run_id, status, model, model_kind, corpus, context_len, dtype, device,"
            " config, versions, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                RunStatus.RUNNING,
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
    for t in (*SAE_TABLES, *DERIVED_SAE_TABLES):
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
        status = RunStatus.INTERRUPTED if isinstance(e, KeyboardInterrupt) else RunStatus.FAILED
        mark_run(path, run_id, status, f"{type(e).__name__}: {e}"[:500])
        raise


def mark_run(path: str | Path, run_id: str, status: RunStatus, error: str | None = None) -> None:
    with connect_write(path) as con:
        con.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?", [status, error, now(), run_id]
        )


def append_target(path: str | Path, key: dict, run_name: str | None, names: list[str]) -> tuple[str, int]:
    """The complete run in `path` that SAEs measured with options `key` (PrecomputeConfig.run_key)
    can join, and the group number they get there; one-line errors for no such run, several, or
    an SAE name the run already has."""
    if not Path(path).exists():
        raise UserError(f"--append: {path} does not exist; build the first group without --append")
    with connect_write(path) as con:
        runs = con.execute(
            "SELECT run_id, config FROM runs WHERE status = ? ORDER BY started_at", [RunStatus.COMPLETE]
        ).fetchall()
        same = [rid for rid, config in runs if _run_key(json.loads(config)) == key and run_name in (None, rid)]
        if not same:
            named = f" named {run_name!r}" if run_name else ""
            raise UserError(
                f"--append: no complete run{named} in {Path(path).name} read this model, corpus and these options "
                f"({len(runs)} complete run(s) there; `python -m backend info {path}` lists them)"
            )
        if len(same) > 1:
            raise UserError(f"--append: runs {', '.join(same)} all match; choose one with --run-name")
        run_id = same[0]
        have = con.execute("SELECT sae, grp FROM saes WHERE run_id = ?", [run_id]).fetchall()
    taken = {sae for sae, _ in have}
    clash = sorted(n for n in names if n in taken or f"{n}@{run_id}" in taken)
    if clash:
        raise UserError(f"--append: run {run_id!r} already has {', '.join(clash)}; leave those SAEs out of this group")
    return run_id, 1 + max((g for _, g in have), default=-1)


def _run_key(config: dict) -> dict | None:
    from backend.config import PrecomputeConfig

    try:
        return PrecomputeConfig.from_dict(config).run_key()
    except (TypeError, UserError):  # written by a version with other options: not the same run
        return None


def unique_sae_names(path: str | Path, run_id: str, names: list[str]) -> list[str]:
    """Names already used by another run in this file get an `@run_id` suffix."""
    with connect_write(path) as con:
        taken = {r[0] for r in con.execute("SELECT sae FROM saes WHERE run_id <> ?", [run_id]).fetchall()}
    return [f"{n}@{run_id}" if n in taken else n for n in names]


class RunWriter:
    """Writes a finished run and marks it complete in one short transaction. Each SAE's tables
    are handed over as soon as they are made; past the first IN_MEMORY bytes they are spooled to
    Parquet files beside the database, so the final step holds about one SAE's rows in memory at
    a time (at GPT-2-small width 200 MB instead of 2.4 GB) while the database stays free for
    readers until the last moment. A failure rolls everything back and removes the spool, so no
    half-written run is ever visible.

        with RunWriter(db, run_id) as w:
            w.sae(name, {table: frame, ...})  # per SAE, any of schema.SAE_TABLES, in any order
            w.finish(run_fields, saes, run_tables, tokens_parquet)
    """

    IN_MEMORY = 64 * 2**20
    """bytes of tables kept in memory before spooling starts (a small run never touches disk)"""

    def __init__(self, path: str | Path, run_id: str):
        self.path, self.run_id = Path(path), run_id
        self.spool = self.path.with_name(f".{self.path.name}.{run_id}.spool")
        self.parts: dict[str, list[tuple[str, pd.DataFrame | pa.Table | str]]] = {t: [] for t in SAE_TABLES}
        """per table, (SAE, frame held in memory or path of a spooled Parquet file)"""
        self.held = 0

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        shutil.rmtree(self.spool, ignore_errors=True)
        return False

    def sae(self, name: str, tables: dict[str, pd.DataFrame | pa.Table]) -> None:
        for t, df in tables.items():
            if t not in self.parts:
                raise ValueError(f"{t} is not a per-SAE table")
            if df is None or len(df) == 0:
                continue
            size = df.nbytes if isinstance(df, pa.Table) else int(df.memory_usage(index=False).sum())
            if self.held + size <= self.IN_MEMORY:
                self.parts[t].append((name, df))
                self.held += size
                continue
            self.spool.mkdir(parents=True, exist_ok=True)
            table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
            f = self.spool / f"{t}-{len(self.parts[t]):05d}.parquet"
            pq.write_table(table, f, compression="zstd")
            self.parts[t].append((name, str(f)))

    def finish(
        self,
        run_fields: dict,
        saes: pd.DataFrame,
        tables: dict[str, pd.DataFrame],
        sequences_parquet: str | list[str] | None,
        append: bool = False,
    ) -> None:
        """Everything in one transaction: the `saes` rows, the run's sequences and vocabulary
        (`tables["vocab"]`), the spooled per-SAE tables, the propagation tables, the run complete.
        `append`: the run is complete already and keeps its rows, sequences and vocabulary; the
        sequences read now must be those it holds, and its counts stay as they are."""
        with connect_write(self.path) as con:
            con.execute("BEGIN")
            try:
                if append:
                    _check_same_tokens(con, self.run_id, sequences_parquet)
                else:
                    con.execute("DELETE FROM saes WHERE run_id = ?", [self.run_id])
                _insert(con, "saes", saes)
                if sequences_parquet is not None and not append:
                    con.execute(
                        "INSERT INTO sequences SELECT ?, seq, tokens FROM read_parquet(?) ORDER BY seq",
                        [self.run_id, sequences_parquet],
                    )
                if not append:
                    _insert(con, "vocab", tables.get("vocab"))
                # features.top_tokens is computed from the examples, sequences and vocab above
                for t in (*(t for t in SAE_TABLES if t != "features"), "features"):
                    for sae, part in self.parts[t]:  # one part at a time: each part's own column types cast
                        if t == "features":
                            with _source(con, part) as (src, _):
                                _insert_features(con, self.run_id, [sae], src)
                        else:
                            _insert(con, t, part)
                for name in PROPAGATION_TABLES:
                    _insert(con, name, tables.get(name))
                _derive(con, self.run_id, list(saes["sae"]), sequences=sequences_parquet is not None and not append)
                if not append:
                    sets = ", ".join(f"{k} = ?" for k in run_fields)
                    con.execute(
                        f"UPDATE runs SET {sets}, status = ?, finished_at = ?, error = NULL WHERE run_id = ?",
                        [*run_fields.values(), RunStatus.COMPLETE, now(), self.run_id],
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise


def _derive(con, run_id: str, saes: list[str], sequences: bool) -> None:
    """The tables search reads (schema.DERIVED_SAE_TABLES, `sequence_text`), from the rows just
    written: these SAEs' top examples sorted by sequence, and, with new sequences, their text."""
    con.execute(
        f"""INSERT INTO examples_by_seq
            SELECT e.seq, e.sae, e.feature, e.rank, e.pos, e.ctx_start, e.value, s.tokens[e.pos + 1]
            FROM examples e JOIN sequences s ON s.run_id = ? AND s.seq = e.seq
            WHERE e.kind = {int(ExampleKind.TOP)} AND e.sae IN (SELECT unnest(?::VARCHAR[]))
            ORDER BY e.seq, e.sae, e.feature, e.rank""",
        [run_id, saes],
    )
    if sequences:
        corpus_text.write(con, run_id)


def _check_same_tokens(con, run_id: str, sequences_parquet: str | list[str] | None) -> None:
    """An appended group must have read exactly the run's sequences (a local corpus file may have
    changed since, or a tokenizer): its per-SAE tables would not describe the run's tokens."""
    if sequences_parquet is None:
        raise UserError("--append needs the sequences the pass read, to check them against the run's")
    differ = con.execute(
        """SELECT count(*), min(seq) FROM (SELECT seq, tokens FROM read_parquet(?)) t
           FULL OUTER JOIN (SELECT seq, tokens FROM sequences WHERE run_id = ?) s USING (seq)
           WHERE t.tokens IS DISTINCT FROM s.tokens""",
        [sequences_parquet, run_id],
    ).fetchall()[0]
    if differ[0]:
        raise UserError(
            f"--append: the corpus now gives other tokens than run {run_id!r} read ({differ[0]} sequence(s) differ, "
            f"the first is {differ[1]}); nothing was added. Append only with the corpus and tokenizer the run read"
        )


@contextmanager
def _source(con, part: pd.DataFrame | pa.Table | str):
    """(FROM clause, column list) for a frame (registered as tmp_df while in use) or a Parquet file."""
    if isinstance(part, str):
        yield "read_parquet('" + part.replace("'", "''") + "')", ", ".join(pq.read_schema(part).names)
        return
    con.register("tmp_df", part)
    try:
        yield "tmp_df", ", ".join(part.column_names if isinstance(part, pa.Table) else part.columns)
    finally:
        con.unregister("tmp_df")


def _insert(con, table: str, part: pd.DataFrame | pa.Table | str | None) -> None:
    """Insert a frame, or the rows of a spooled Parquet file, by column name."""
    if part is None or (not isinstance(part, str) and len(part) == 0):
        return
    with _source(con, part) as (src, cols):
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {src}")


def _insert_features(con, run_id: str, saes: list[str], source: str) -> None:
    con.execute(
        f"""INSERT INTO features SELECT f.sae, f.feature, f.count, f.density, f.mean_act, f.max_act, f.hist,
                   f.count_ge_1pct, f.count_ge_10pct, t.top_tokens
            FROM {source} f LEFT JOIN ({TOP_TOKENS}) t ON t.sae = f.sae AND t.feature = f.feature
            ORDER BY f.sae, f.feature""",
        {"run": run_id, "saes": saes},
    )


def has_complete_run(path: str | Path) -> bool:
    with connect_write(path, wait_s=0) as con:
        return bool(con.execute("SELECT count(*) FROM runs WHERE status = ?", [RunStatus.COMPLETE]).fetchone()[0])
