"""The explanations store: one SQLite file beside the feature databases (`explanations.sqlite`
in the data folder, or SAE_DASHBOARD_EXPLANATIONS), with an FTS5 index ranked by BM25.

Rows are (database file name, sae, feature, source, text, score); importing the same
explanation again adds nothing. An import is one transaction: all of a file, or nothing.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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


def _connect(path: str, write: bool = False) -> sqlite3.Connection | None:
    if not write and not Path(path).exists():
        return None
    try:
        con = sqlite3.connect(path, timeout=30)
        if write:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        return con
    except sqlite3.Error as e:
        raise UserError(f"explanations store {path} cannot be opened: {e}") from None


def add(path: str, rows: pd.DataFrame) -> int:
    """Insert rows (db, sae, feature, source, text, score) in one transaction; returns how many
    were new."""
    con = _connect(path, write=True)
    try:
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
    finally:
        con.close()


def _read(path: str, sql: str, params: list) -> pd.DataFrame:
    con = _connect(path)
    if con is None:
        return pd.DataFrame(columns=["sae", "feature", "source", "text", "score"])
    try:
        return pd.read_sql_query(sql, con, params=params)
    except sqlite3.Error as e:
        raise UserError(f"explanations store {path} cannot be read: {e}") from None
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
    words = [w.replace('"', '""') for w in query.split()]
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
