"""The explanations store: one SQLite file beside the feature databases (`explanations.sqlite`
in the data folder, or SAE_DASHBOARD_EXPLANATIONS), with an FTS5 index ranked by BM25.

An explanation is (database file name, sae, feature, source, text), with the model that wrote
it where known (`explainer`); each has at most one score per scorer (delphi's detection, fuzz,
...). Importing the same explanation again adds nothing but the scores it lacked. An import is
one transaction: all of a file, or nothing. Reads open the file read-only and never create
anything, so the store may sit on a read-only mount; they also read stores of earlier versions
(one unnamed score per explanation, shown as scorer "unrecorded").
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
    score   REAL,               -- stores of earlier versions: one score, scorer not recorded
    UNIQUE (db, sae, feature, source, text)
);
CREATE TABLE IF NOT EXISTS scores (
    explanation INTEGER NOT NULL REFERENCES explanations (id),
    scorer      TEXT NOT NULL,  -- delphi: detection, fuzz, ...; neuronpedia: its score field
    value       REAL NOT NULL,  -- delphi: balanced accuracy, as delphi computes it
    UNIQUE (explanation, scorer)
);
CREATE VIRTUAL TABLE IF NOT EXISTS explanations_fts USING fts5(
    text, content='explanations', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS explanations_ai AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts (rowid, text) VALUES (new.id, new.text);
END;
"""


UNRECORDED = "unrecorded"
"""the scorer of a score imported by a version that did not record scorers"""
COLUMNS = ["db", "sae", "feature", "source", "explainer", "text", "scorer", "score"]
"""what `add` takes: one row per (explanation, scorer); scorer and score None for no score"""


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


def add(path: str, rows: pd.DataFrame) -> tuple[int, int]:
    """Insert rows (COLUMNS) in one transaction; returns (new explanations, new scores). A
    store this call created is removed again if the write fails (a full disk), so a failed
    import never leaves an empty store behind; a file that is not a store is refused."""
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
            _upgrade(con)
        with con:
            return _insert(con, rows)
    except sqlite3.Error as e:
        con.close()
        if created:
            for leftover in (p, p.with_name(p.name + "-journal"), p.with_name(p.name + "-wal")):
                leftover.unlink(missing_ok=True)
        raise UserError(f"could not write the explanations store {path}: {e} (nothing was imported)") from None
    finally:
        con.close()


def _upgrade(con: sqlite3.Connection) -> None:
    """A store of an earlier version: the explainer column, and its one score per explanation
    moved into `scores` under scorer "unrecorded"."""
    cols = {r[1] for r in con.execute("PRAGMA table_info(explanations)")}
    if "explainer" not in cols:
        con.execute("ALTER TABLE explanations ADD COLUMN explainer TEXT")
    con.execute(
        "INSERT OR IGNORE INTO scores (explanation, scorer, value) SELECT id, ?, score FROM explanations "
        "WHERE score IS NOT NULL",
        [UNRECORDED],
    )
    con.execute("UPDATE explanations SET score = NULL WHERE score IS NOT NULL")


def _insert(con: sqlite3.Connection, rows: pd.DataFrame) -> tuple[int, int]:
    new_expl = new_scores = 0
    for r in rows.reindex(columns=COLUMNS).itertuples():
        key = (r.db, r.sae, int(r.feature), r.source, r.text)
        cur = con.execute(
            "INSERT OR IGNORE INTO explanations (db, sae, feature, source, text, explainer) VALUES (?, ?, ?, ?, ?, ?)",
            [*key, None if pd.isna(r.explainer) else r.explainer],
        )
        new_expl += cur.rowcount
        if not isinstance(r.scorer, str) or pd.isna(r.score):
            continue
        (eid,) = con.execute(
            "SELECT id FROM explanations WHERE db = ? AND sae = ? AND feature = ? AND source = ? AND text = ?", key
        ).fetchone()
        new_scores += con.execute(
            "INSERT OR IGNORE INTO scores (explanation, scorer, value) VALUES (?, ?, ?)",
            [eid, r.scorer, float(r.score)],
        ).rowcount
    return new_expl, new_scores


def _is_sqlite(p: Path) -> bool:
    with p.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


_EMPTY = ["sae", "feature", "source", "explainer", "text", "scorer", "score"]


def _read(path: str, sql: str, params: list, columns: list[str] = _EMPTY) -> pd.DataFrame:
    """Rows of a query; an unreadable store (0 bytes, not SQLite, locked, a read-only folder it
    cannot open in) is a UserError the pages show as a warning where explanations would be.
    `{scores}` and `{explainer}` in `sql` stand for this store's scores and explainer column,
    whichever version wrote it."""
    con = _connect_read(path)
    if con is None:
        return pd.DataFrame(columns=columns)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        cols = {r[1] for r in con.execute("PRAGMA table_info(explanations)")}
        scores = (
            "(SELECT explanation, scorer, value FROM scores)"
            if "scores" in tables
            else f"(SELECT id AS explanation, '{UNRECORDED}' AS scorer, score AS value FROM explanations "
            "WHERE score IS NOT NULL)"
        )
        explainer = "e.explainer" if "explainer" in cols else "NULL"
        return pd.read_sql_query(sql.format(scores=scores, explainer=explainer), con, params=params)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        why = str(e).rsplit("': ", 1)[-1] if "Execution failed" in str(e) else str(e)
        raise UserError(f"the explanations store {Path(path).name} cannot be read ({why})") from None
    finally:
        con.close()


def for_feature(path: str, db: str, sae: str, feature: int) -> pd.DataFrame:
    """One row per explanation of the feature: source, explainer, text and a column per scorer,
    the best-scored first."""
    df = _read(
        path,
        "SELECT e.source, {explainer} AS explainer, e.text, s.scorer, s.value AS score FROM explanations e "
        "LEFT JOIN {scores} s ON s.explanation = e.id WHERE e.db = ? AND e.sae = ? AND e.feature = ? "
        "ORDER BY e.id",
        [db, sae, int(feature)],
    )
    keys = ["source", "explainer", "text"]
    df = df.assign(explainer=df["explainer"].fillna(""))
    base = df[keys].drop_duplicates()
    scored = df.dropna(subset=["scorer", "score"])
    if scored.empty:
        return base.reset_index(drop=True)
    wide = scored.pivot_table(index=keys, columns="scorer", values="score", aggfunc="max").reset_index()
    wide = base.merge(wide, on=keys, how="left")
    best = wide[[c for c in wide.columns if c not in keys]].max(axis=1)
    order = best.sort_values(ascending=False, na_position="last", kind="stable").index
    return wide.loc[order].reset_index(drop=True)


def for_sae(path: str, db: str, sae: str | None = None) -> pd.DataFrame:
    """Every explanation with each of its scores, one row per (explanation, scorer); an
    explanation without a score has scorer and score empty."""
    where, params = ("e.db = ?", [db]) if sae is None else ("e.db = ? AND e.sae = ?", [db, sae])
    return _read(
        path,
        "SELECT e.sae, e.feature, e.source, {explainer} AS explainer, e.text, s.scorer, s.value AS score "
        f"FROM explanations e LEFT JOIN {{scores}} s ON s.explanation = e.id WHERE {where} "
        "ORDER BY e.sae, e.feature, e.id, s.scorer",
        params,
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
        f"""SELECT e.sae, e.feature, e.source, e.text,
                   (SELECT max(s.value) FROM {{scores}} s WHERE s.explanation = e.id) AS score,
                   bm25(explanations_fts) AS rank
            FROM explanations_fts JOIN explanations e ON e.id = explanations_fts.rowid
            WHERE explanations_fts MATCH ? AND e.db = ? {extra} ORDER BY rank LIMIT ?""",
        [match, db, *params, limit],
        ["sae", "feature", "source", "text", "score", "rank"],
    )
