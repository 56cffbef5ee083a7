"""The explanations store: one SQLite file beside the feature databases (`explanations.sqlite`
in the data folder, or SAE_DASHBOARD_EXPLANATIONS), with an FTS5 index ranked by BM25.

Rows are (database file name, sae, feature, source, text, score); importing the same
explanation again adds nothing. An import is one transaction: all of a file, or nothing. Reads
open the file read-only and never create anything, so the store may sit on a read-only mount.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from backend.errors import UserError
from backend.paths import data_dir

ENV = "SAE_DASHBOARD_EXPLANATIONS"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS explanations (
    id      INTEGER PRIMARY KEY,
    db      TEXT NOT NULL,      -- feature database file name
    sae     TEXT NOT NULL,
    feature INTEGER NOT NULL,
    source  TEXT NOT NULL,      -- e.g. neuronpedia:gpt-4o-mini, delphi
    text    TEXT NOT NULL,
    score   REAL,               -- the source's own score where it gives one (delphi: balanced accuracy)
    UNIQUE (db, sae, feature, source, text)
);
CREATE VIRTUAL TABLE IF NOT EXISTS explanations_fts USING fts5(
    text, content='explanations', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS explanations_ai AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts (rowid, text) VALUES (new.id, new.text);
END;
"""


def location() -> str:
    return os.environ.get(ENV) or str(data_dir() / "explanations.sqlite")


def _connect_read(path: str) -> sqlite3.Connection | None:
    """Read-only, so a store on a read-only mount (the shared setup) opens: `mode=ro` first, then
    `immutable=1` for a store left in WAL mode, whose readers would otherwise create files."""
    if not Path(path).exists():
        return None
    uri = f"file:{quote(str(Path(path).resolve()))}"
    last: Exception | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        con = None
        try:
            con = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=30)
            con.execute("SELECT count(*) FROM explanations").fetchone()
            return con
        except sqlite3.Error as e:
            last = e
            if con is not None:
                con.close()
    raise UserError(f"the explanations store {Path(path).name} cannot be read ({last})")


def add(path: str, rows: pd.DataFrame) -> int:
    """Insert rows (db, sae, feature, source, text, score) in one transaction; returns how many
    were new. A store this call created is removed again if the write fails (a full disk), so a
    failed import never leaves an empty store behind; a file that is not a store is refused."""
    p = Path(path)
    created = not p.exists()
    if not created and p.is_file() and p.stat().st_size and not _is_sqlite(p):
        raise UserError(f"{path} exists and is not an explanations store: refusing to write into it")
    if not created and p.is_file() and not p.stat().st_size:
        raise UserError(f"{path} is an empty file (left by a failed write?): delete it and import again")
    try:
        con = sqlite3.connect(path, timeout=30)
    except sqlite3.Error as e:
        raise UserError(f"the explanations store {path} cannot be opened: {e}") from None
    try:
        with con:
            # a rollback journal, not WAL: readers on a read-only mount need no files beside it
            con.execute("PRAGMA journal_mode=DELETE")
            con.executescript(_SCHEMA)
        with con:
            before = con.execute("SELECT count(*) FROM explanations").fetchone()[0]
            con.executemany(
                "INSERT OR IGNORE INTO explanations (db, sae, feature, source, text, score) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.db, r.sae, int(r.feature), r.source, r.text, None if pd.isna(r.score) else float(r.score))
                    for r in rows.itertuples()
                ],
            )
            return con.execute("SELECT count(*) FROM explanations").fetchone()[0] - before
    except sqlite3.Error as e:
        con.close()
        if created:
            for leftover in (p, p.with_name(p.name + "-journal"), p.with_name(p.name + "-wal")):
                leftover.unlink(missing_ok=True)
        raise UserError(f"could not write the explanations store {path}: {e} (nothing was imported)") from None
    finally:
        con.close()


def _is_sqlite(p: Path) -> bool:
    with p.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _read(path: str, sql: str, params: list) -> pd.DataFrame:
    """Rows of a query; an unreadable store (0 bytes, not SQLite, locked, a read-only folder it
    cannot open in) is a UserError the pages show as a warning where explanations would be."""
    con = _connect_read(path)
    if con is None:
        return pd.DataFrame(columns=["sae", "feature", "source", "text", "score"])
    try:
        return pd.read_sql_query(sql, con, params=params)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        why = str(e).rsplit("': ", 1)[-1] if "Execution failed" in str(e) else str(e)
        raise UserError(f"the explanations store {Path(path).name} cannot be read ({why})") from None
    finally:
        con.close()


def for_feature(path: str, db: str, sae: str, feature: int) -> pd.DataFrame:
    return _read(
        path,
        "SELECT source, text, score FROM explanations WHERE db = ? AND sae = ? AND feature = ? "
        "ORDER BY score IS NULL, score DESC, source",
        [db, sae, int(feature)],
    )


def for_sae(path: str, db: str, sae: str | None = None) -> pd.DataFrame:
    where, params = ("db = ?", [db]) if sae is None else ("db = ? AND sae = ?", [db, sae])
    return _read(
        path, f"SELECT sae, feature, source, text, score FROM explanations WHERE {where} ORDER BY sae, feature", params
    )


def search(path: str, db: str, query: str, sae: str | None = None, limit: int = 200) -> pd.DataFrame:
    """Explanations matching the words of `query`, best first (BM25). The query is taken as
    plain words (each quoted), so FTS5 syntax in it is never interpreted."""
    printable = "".join(c if c.isprintable() else " " for c in query)  # NUL and friends are no words
    words = [w.replace('"', '""') for w in printable.split()]
    if not words:
        return pd.DataFrame(columns=["sae", "feature", "source", "text", "score", "rank"])
    match = " ".join(f'"{w}"' for w in words)
    extra, params = ("AND e.sae = ?", [sae]) if sae else ("", [])
    return _read(
        path,
        f"""SELECT e.sae, e.feature, e.source, e.text, e.score, bm25(explanations_fts) AS rank
            FROM explanations_fts JOIN explanations e ON e.id = explanations_fts.rowid
            WHERE explanations_fts MATCH ? AND e.db = ? {extra} ORDER BY rank LIMIT ?""",
        [match, db, *params, limit],
    )
