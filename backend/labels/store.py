"""The team's verdicts, append-only, in a store made for many concurrent writers.

SQLite (WAL, a busy timeout, synchronous=FULL) is the embedded default; a `postgresql://` URL
serves teams running several app servers or hosts. A verdict is acknowledged once `add`
returns: its transaction has committed. A new verdict supersedes the labeler's earlier one on
the same feature but never deletes it; "earlier" is the store's own insertion sequence (`seq`),
never a time a client supplied. Reads never write and never create a store.
"""

from __future__ import annotations

import logging
import numbers
import os
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from backend.errors import UserError
from backend.paths import data_dir
from backend.store.datafolder import connect_read

log = logging.getLogger(__name__)

VERDICTS = ("interpretable", "not interpretable", "unsure")
COLUMNS = ["uid", "db", "run_id", "sae", "feature", "verdict", "description", "confidence", "labeler", "created_at"]
"""what an exported label carries; `seq` is the store's own and is not exported"""
MAX_FEATURE = 2**31 - 1
MAX_DESCRIPTION = 2000
FILE_NAME = "labels.sqlite"
LEGACY_FILE_NAME = "labels.duckdb"
"""where versions before the SQLite store kept labels; read (and copied over) when no store exists"""

_VERDICT_CHECK = "verdict IN ('interpretable', 'not interpretable', 'unsure')"
_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS labels (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: decides which verdict is current
    uid         TEXT NOT NULL UNIQUE,               -- stable across export/import: re-importing never duplicates
    db          TEXT NOT NULL,                      -- feature database file name
    run_id      TEXT NOT NULL,
    sae         TEXT NOT NULL,
    feature     INTEGER NOT NULL CHECK (feature BETWEEN 0 AND {MAX_FEATURE}),
    verdict     TEXT NOT NULL CHECK ({_VERDICT_CHECK}),
    description TEXT,
    confidence  INTEGER CHECK (confidence BETWEEN 1 AND 3),   -- 1 low, 2 medium, 3 high
    labeler     TEXT NOT NULL,
    created_at  TEXT NOT NULL                       -- when the verdict was given (UTC, ISO); shown, never ordered by
)
"""
_PG_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS labels (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid         TEXT NOT NULL UNIQUE,
    db          TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    sae         TEXT NOT NULL,
    feature     INTEGER NOT NULL CHECK (feature BETWEEN 0 AND {MAX_FEATURE}),
    verdict     TEXT NOT NULL CHECK ({_VERDICT_CHECK}),
    description TEXT,
    confidence  INTEGER CHECK (confidence BETWEEN 1 AND 3),
    labeler     TEXT NOT NULL,
    created_at  TEXT NOT NULL
)
"""
_INSERT = (
    f"INSERT INTO labels ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (uid) DO NOTHING"
)


@dataclass
class Label:
    """One verdict as a labeler gives it; validation here is what every write path shares."""

    db: str
    run_id: str
    sae: str
    feature: int
    verdict: str
    labeler: str
    description: str | None = None
    confidence: int | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise UserError(f"verdict must be one of {', '.join(VERDICTS)}; got {self.verdict!r}")
        self.labeler = (self.labeler or "").strip()
        if not self.labeler:
            raise UserError("choose a labeler name before labeling")
        if len(self.labeler) > 80:
            raise UserError("labeler names are at most 80 characters")
        if self.description is not None:
            self.description = str(self.description).strip() or None
            if self.description and len(self.description) > MAX_DESCRIPTION:
                raise UserError(
                    f"a description is at most {MAX_DESCRIPTION:,} characters; this one has {len(self.description):,}"
                )
        if self.confidence is not None and self.confidence not in (1, 2, 3):
            raise UserError(f"confidence is 1 (low), 2 (medium) or 3 (high); got {self.confidence!r}")
        if isinstance(self.feature, bool) or not isinstance(self.feature, numbers.Integral):
            raise UserError(f"feature must be a whole number; got {self.feature!r}")
        self.feature = int(self.feature)
        if not 0 <= self.feature <= MAX_FEATURE:
            raise UserError(f"feature must be between 0 and {MAX_FEATURE}; got {self.feature}")

    def row(self, uid: str | None = None, created_at: str | None = None) -> list:
        return [
            uid or uuid.uuid4().hex,
            self.db,
            self.run_id,
            self.sae,
            self.feature,
            self.verdict,
            self.description,
            self.confidence,
            self.labeler,
            created_at or now_iso(),
        ]


def now_iso() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def location(explicit: str | os.PathLike | None = None) -> str:
    """Where labels live: `explicit`, else SAE_DASHBOARD_LABELS (a file path or a postgresql://
    URL), else labels.sqlite in the data folder. The app and the CLI both ask here."""
    if explicit:
        return str(explicit)
    return os.environ.get("SAE_DASHBOARD_LABELS") or str(data_dir() / FILE_NAME)


def describe(loc: str) -> str:
    """A location fit to show: a PostgreSQL URL without its password."""
    if _is_postgres(loc):
        from urllib.parse import urlsplit

        u = urlsplit(loc)
        host = u.hostname or "localhost"
        return (
            f"postgresql://{u.username + '@' if u.username else ''}{host}{':' + str(u.port) if u.port else ''}{u.path}"
        )
    return loc


def _is_postgres(loc: str) -> bool:
    return loc.startswith(("postgresql://", "postgres://"))


# ---- the two stores ----


class _SQLite:
    def __init__(self, path: str):
        self.path = Path(path)
        self.marker = self.path.with_name(f".{self.path.name}.created")

    def _missing_but_known(self) -> bool:
        return not self.path.exists() and self.marker.exists()

    def _check_not_lost(self) -> None:
        """A missing store that was here, an emptied one (0 bytes: a full disk, a careless copy)
        and a file that is not SQLite are all reported, never quietly replaced or written into."""
        if self.path.is_file():
            with self.path.open("rb") as fh:
                head = fh.read(16)
            if not head and self.marker.exists():  # (without the marker: another writer is creating it)
                raise UserError(
                    f"the labels store {self.path} is an empty file (0 bytes), not a store: restore it from a "
                    f"backup or import an export with `python -m backend labels import`; delete it to start an "
                    f"empty store on purpose"
                )
            if head and head != b"SQLite format 3\x00":
                raise UserError(f"{self.path} is not a labels store (not a SQLite file): refusing to use it")
        if self._missing_but_known():
            raise UserError(
                f"the labels store {self.path} is missing, but it was created here before "
                f"({self.marker.name} remembers it): restore the file, or import an export with "
                f"`python -m backend labels import`; delete {self.marker} to start an empty store on purpose"
            )

    @contextmanager
    def write(self):
        self._check_not_lost()
        if self.path.is_dir():
            raise UserError(f"the labels store {self.path} is a folder, not a file")
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise UserError(f"cannot open the labels store {self.path} for writing: {e}") from None
        try:
            yield from self._write(con, created)
        except BaseException:
            con.close()
            # a store this call began and could not write a byte of (a full disk): no empty file stays
            if created and self.path.is_file() and self.path.stat().st_size == 0:
                for leftover in ("", "-wal", "-shm", "-journal"):
                    self.path.with_name(self.path.name + leftover).unlink(missing_ok=True)
            raise

    def _write(self, con, created: bool):
        try:
            try:
                con.execute("PRAGMA busy_timeout = 60000")
                con.execute("PRAGMA journal_mode = WAL")
                con.execute("PRAGMA synchronous = FULL")
                con.execute(_SQLITE_SCHEMA)
                if created:
                    self.marker.write_text(f"{self.path.name} was created here on {now_iso()}\n")
                    self._copy_legacy(con)
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                raise UserError(f"cannot write to the labels store {self.path}: {e}") from None
            except OSError as e:
                raise UserError(f"cannot write beside the labels store {self.path}: {e.strerror or e}") from None
            try:
                yield _Cursor(con, "?")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise UserError(f"could not save to the labels store {self.path}: {e}") from None
        finally:
            con.close()

    def read(self, sql: str, params=()) -> pd.DataFrame | None:
        """Rows of a query, or None when no store exists yet (and none is remembered)."""
        self._check_not_lost()
        if not self.path.exists():
            return None
        try:
            con = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=60)
        except sqlite3.Error as e:
            raise UserError(f"cannot read the labels store {self.path}: {e}") from None
        try:
            return pd.read_sql_query(sql, con, params=list(params))
        except (sqlite3.Error, pd.errors.DatabaseError) as e:
            msg = str(e).split(":", 1)[-1].strip() if "Execution failed" in str(e) else str(e)
            if "no such table" in msg:
                return None  # created but not yet written
            raise UserError(f"cannot read the labels store {self.path}: {msg}") from None
        finally:
            con.close()

    def legacy(self) -> Path:
        return self.path.with_name(LEGACY_FILE_NAME)

    def _copy_legacy(self, con) -> None:
        """Carry the labels of the former DuckDB store over once, in their old order."""
        old = self.legacy()
        if not old.exists():
            return

        with connect_read(old) as dcon:
            rows = dcon.execute(f"SELECT {', '.join(COLUMNS)} FROM labels ORDER BY created_at, uid").fetchall()
        con.execute("BEGIN IMMEDIATE")
        for r in rows:
            con.execute(_INSERT, [*r[:-1], pd.Timestamp(r[-1]).isoformat()])
        con.execute("COMMIT")
        log.warning("copied %d labels from %s into %s", len(rows), old, self.path)


class _Postgres:
    def __init__(self, url: str):
        self.url = url

    def _connect(self):
        try:
            import psycopg
        except ImportError:
            raise UserError(
                "a postgresql:// labels store needs the psycopg package (pip install psycopg[binary])"
            ) from None
        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.Error as e:
            raise UserError(
                f"cannot reach the labels store {describe(self.url)}: {str(e).strip().splitlines()[0]}"
            ) from None

    @contextmanager
    def write(self):
        import psycopg

        con = self._connect()
        try:
            with con.transaction():
                # one creator at a time: concurrent CREATE TABLE IF NOT EXISTS can collide
                con.execute("SELECT pg_advisory_xact_lock(7461)")
                con.execute(_PG_SCHEMA)
            with con.transaction():
                yield _Cursor(con, "%s")
        except psycopg.Error as e:
            raise UserError(
                f"could not save to the labels store {describe(self.url)}: {str(e).strip().splitlines()[0]}"
            ) from None
        finally:
            con.close()

    def read(self, sql: str, params=()) -> pd.DataFrame | None:
        import psycopg

        con = self._connect()
        try:
            cur = con.execute(sql.replace("?", "%s"), list(params))
            cols = [c.name for c in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=cols)
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.Error as e:
            raise UserError(
                f"cannot read the labels store {describe(self.url)}: {str(e).strip().splitlines()[0]}"
            ) from None
        finally:
            con.close()


class _Cursor:
    """The one write operation both stores share: insert a row unless its uid is there."""

    def __init__(self, con, placeholder: str):
        self.con, self.sql = con, _INSERT.replace("?", placeholder)

    def insert(self, row: list) -> bool:
        return self.con.execute(self.sql, row).rowcount == 1


def _store(loc: str | os.PathLike):
    loc = str(loc)
    return _Postgres(loc) if _is_postgres(loc) else _SQLite(loc)


# ---- the API pages and the CLI use ----


def add(loc: str | os.PathLike, label: Label) -> str:
    """Append one verdict; returns its uid once it is committed."""
    row = label.row()
    with _store(loc).write() as cur:
        cur.insert(row)
    return row[0]


def add_rows(loc: str | os.PathLike, rows: list[list]) -> int:
    """Append already validated rows (COLUMNS order) in one transaction, in order, skipping uids
    already present; returns how many were new. All or nothing."""
    if not rows:
        return 0
    with _store(loc).write() as cur:
        return sum(cur.insert(r) for r in rows)


def exists(loc: str | os.PathLike) -> bool:
    """Whether there is a store to read (a PostgreSQL URL always names one; reaching it may fail)."""
    store = _store(loc)
    return isinstance(store, _Postgres) or store.path.exists() or store.legacy().exists()


def all_labels(loc: str | os.PathLike) -> pd.DataFrame:
    """Every verdict, oldest first by the store's insertion order."""
    store = _store(loc)
    df = store.read(f"SELECT seq, {', '.join(COLUMNS)} FROM labels ORDER BY seq")
    if df is None and isinstance(store, _SQLite) and store.legacy().exists():
        df = _read_legacy(store.legacy())
    if df is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ["seq", *COLUMNS]})
    df["created_at"] = pd.to_datetime(df["created_at"], format="ISO8601")
    return df


def _read_legacy(path: Path) -> pd.DataFrame:

    with connect_read(path) as con:
        df = con.execute(f"SELECT {', '.join(COLUMNS)} FROM labels ORDER BY created_at, uid").df()
    df.insert(0, "seq", range(1, len(df) + 1))
    return df


def latest(loc: str | os.PathLike, db: str | None = None) -> pd.DataFrame:
    """The current verdict of each labeler on each feature: their last one in insertion order."""
    df = all_labels(loc)
    if db is not None:
        df = df[df["db"] == db]
    if df.empty:
        return df
    return df.sort_values("seq").groupby(["db", "sae", "feature", "labeler"], as_index=False).tail(1)


def history(loc: str | os.PathLike, db: str, sae: str, feature: int) -> pd.DataFrame:
    df = all_labels(loc)
    mine = df[(df["db"] == db) & (df["sae"] == sae) & (df["feature"] == feature)]
    return mine.sort_values("seq", ascending=False)


def feature_status(loc: str | os.PathLike, db: str, sae: str) -> pd.DataFrame:
    """Per labeled feature: n labelers, counts per verdict, and a one-word consensus."""
    df = latest(loc, db)
    df = df[df["sae"] == sae] if not df.empty else df
    if df.empty:
        return pd.DataFrame(columns=["feature", "n_labels", "label", "description"])
    df = df.sort_values("seq")
    # column operations, not a Python call per feature: this runs on every Feature and Layer page
    described = df[df["description"].fillna("").astype(str) != ""]
    out = pd.DataFrame(
        {
            "n_labels": df.groupby("feature").size(),
            "n_yes": (df["verdict"] == "interpretable").groupby(df["feature"]).sum(),
            "n_no": (df["verdict"] == "not interpretable").groupby(df["feature"]).sum(),
            "description": described.groupby("feature")["description"].last(),  # the newest one written
        }
    )
    out["description"] = out["description"].astype(object).where(out["description"].notna(), None)
    out["label"] = np.where(
        out["n_yes"] > out["n_no"],
        "interpretable",
        np.where(out["n_no"] > out["n_yes"], "not interpretable", "unsure/split"),
    )
    return out.reset_index()[["feature", "n_labels", "label", "description"]]


def search_descriptions(loc: str | os.PathLike, db: str, query: str, sae: str | None = None) -> pd.DataFrame:
    """The team's current descriptions in which every word of `query` occurs (any case), with
    who wrote them: (sae, feature, text, labeler, verdict), newest first."""
    cols = ["sae", "feature", "text", "labeler", "verdict"]
    words = [w.casefold() for w in "".join(c if c.isprintable() else " " for c in query).split()]
    cur = latest(loc, db)
    if cur.empty or not words:
        return pd.DataFrame(columns=cols)
    cur = cur[cur["description"].notna()]
    if sae:
        cur = cur[cur["sae"] == sae]
    text = cur["description"].astype(str).str.casefold()
    hit = np.logical_and.reduce([text.str.contains(w, regex=False) for w in words]) if len(cur) else []
    out = cur[hit].sort_values("seq", ascending=False).rename(columns={"description": "text"})
    return out[cols].reset_index(drop=True)
