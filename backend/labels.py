"""The team's labels: their own DuckDB file beside the feature databases, append-only.

A new verdict supersedes an older one by the same labeler (the latest wins) but never deletes
it; history stays queryable. Each write opens the file, commits one row and closes it again,
so several app sessions, the CLI and other processes can take turns; a commit is durable once
`add` returns (DuckDB's WAL), which is what "acknowledged" means here.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from backend.errors import UserError

VERDICTS = ("interpretable", "not interpretable", "unsure")

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    uid         VARCHAR PRIMARY KEY,   -- stable across export/import, so re-importing never duplicates
    db          VARCHAR NOT NULL,      -- feature database file name
    run_id      VARCHAR NOT NULL,
    sae         VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    verdict     VARCHAR NOT NULL CHECK (verdict IN ('interpretable', 'not interpretable', 'unsure')),
    description VARCHAR,
    confidence  INTEGER CHECK (confidence BETWEEN 1 AND 3),   -- 1 low, 2 medium, 3 high
    labeler     VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
"""
COLUMNS = ["uid", "db", "run_id", "sae", "feature", "verdict", "description", "confidence", "labeler", "created_at"]
_lock = threading.Lock()


@dataclass
class Label:
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
            self.description = self.description.strip()[:2000] or None
        if self.confidence is not None and self.confidence not in (1, 2, 3):
            raise UserError("confidence is 1 (low), 2 (medium) or 3 (high)")
        if int(self.feature) < 0:
            raise UserError("feature must be >= 0")


def _connect(path: str | Path, retries: int = 200) -> duckdb.DuckDBPyConnection:
    """Open for writing, waiting while another process holds the file (writes are short)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries):
        try:
            con = duckdb.connect(str(path))
            con.execute(SCHEMA)
            return con
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or attempt == retries - 1:
                raise UserError(f"cannot open labels file {path}: {str(e).splitlines()[0]}") from None
            time.sleep(0.02 + random.random() * 0.05)
    raise AssertionError("unreachable")


def _write(path, fn):
    # One process-wide lock: DuckDB serialises writers anyway, and this keeps threads from
    # racing to open the same file with different configurations.
    with _lock:
        con = _connect(path)
        try:
            return fn(con)
        finally:
            con.close()


def add(path: str | Path, label: Label) -> str:
    """Append one verdict; returns its uid once it is committed."""
    uid = uuid.uuid4().hex
    row = [
        uid,
        label.db,
        label.run_id,
        label.sae,
        int(label.feature),
        label.verdict,
        label.description,
        label.confidence,
        label.labeler,
        datetime.now(UTC).replace(tzinfo=None),
    ]
    _write(
        path,
        lambda con: con.execute(
            f"INSERT INTO labels ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", row
        ),
    )
    return uid


def all_labels(path: str | Path) -> pd.DataFrame:
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    return _write(path, lambda con: con.execute("SELECT * FROM labels ORDER BY created_at, uid").df())


def latest(path: str | Path, db: str | None = None) -> pd.DataFrame:
    """The current verdict of each labeler on each feature (their newest)."""
    df = all_labels(path)
    if db is not None:
        df = df[df["db"] == db]
    if df.empty:
        return df
    return df.sort_values("created_at").groupby(["db", "sae", "feature", "labeler"], as_index=False).tail(1)


def feature_status(path: str | Path, db: str, sae: str) -> pd.DataFrame:
    """Per labeled feature: n labelers, counts per verdict, and a one-word consensus."""
    df = latest(path, db)
    df = df[df["sae"] == sae] if not df.empty else df
    if df.empty:
        return pd.DataFrame(columns=["feature", "n_labels", "label", "description"])
    g = df.groupby("feature")
    out = pd.DataFrame(
        {
            "n_labels": g.size(),
            "n_yes": g["verdict"].apply(lambda v: (v == "interpretable").sum()),
            "n_no": g["verdict"].apply(lambda v: (v == "not interpretable").sum()),
            "description": g["description"].apply(lambda d: next((x for x in d[::-1] if x), None)),
        }
    )
    out["label"] = np.where(
        out["n_yes"] > out["n_no"],
        "interpretable",
        np.where(out["n_no"] > out["n_yes"], "not interpretable", "unsure/split"),
    )
    return out.reset_index()[["feature", "n_labels", "label", "description"]]


def history(path: str | Path, db: str, sae: str, feature: int) -> pd.DataFrame:
    df = all_labels(path)
    return df[(df["db"] == db) & (df["sae"] == sae) & (df["feature"] == feature)].sort_values(
        "created_at", ascending=False
    )


# ---- statistics ----


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: sensible at k = 0 or k = n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def interpretability_by_bucket(current: pd.DataFrame, bucket_of) -> pd.DataFrame:
    """Fraction interpretable per SAE and density bucket, over definite verdicts (unsure left out).

    `current`: latest labels with a `log10_density` column; each labeler's verdict counts once.
    """
    cols = ["sae", "bucket", "k", "n", "frac", "lo", "hi"]
    if current.empty:
        return pd.DataFrame(columns=cols)
    df = current[current["verdict"] != "unsure"].copy()
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["bucket"] = df["log10_density"].map(bucket_of)
    rows = []
    for (sae, bucket), g in df.groupby(["sae", "bucket"], sort=False):
        k, n = int((g["verdict"] == "interpretable").sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append((sae, bucket, k, n, k / n, lo, hi))
    return pd.DataFrame(rows, columns=cols)


def agreement(current: pd.DataFrame) -> dict:
    """Percent agreement, Fleiss' kappa (any number of raters) and, with exactly two labelers,
    Cohen's kappa, over features with at least two labelers."""
    if current.empty:
        return {"n_features": 0}
    multi = current.groupby(["db", "sae", "feature"]).filter(lambda g: g["labeler"].nunique() >= 2)
    if multi.empty:
        return {"n_features": 0}
    cats = list(VERDICTS)
    counts = (
        multi.groupby(["db", "sae", "feature"])["verdict"]
        .value_counts()
        .unstack(fill_value=0)
        .reindex(columns=cats, fill_value=0)
        .to_numpy(dtype=float)
    )
    n_i = counts.sum(1)
    # Pairwise agreement per item, averaged (also the P_i of Fleiss).
    p_i = (counts * (counts - 1)).sum(1) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(0) / counts.sum()
    p_e = (p_j**2).sum()
    fleiss = (p_bar - p_e) / (1 - p_e) if p_e < 1 else float("nan")
    out = {"n_features": int(len(counts)), "percent_agreement": float(p_bar), "fleiss_kappa": float(fleiss)}
    labelers = multi["labeler"].unique()
    if len(labelers) == 2:
        wide = multi.pivot_table(
            index=["db", "sae", "feature"], columns="labeler", values="verdict", aggfunc="last"
        ).dropna()
        a, b = wide[labelers[0]], wide[labelers[1]]
        po = float((a == b).mean())
        pe = sum(float((a == c).mean()) * float((b == c).mean()) for c in cats)
        out["cohen_kappa"] = (po - pe) / (1 - pe) if pe < 1 else float("nan")
        out["cohen_pair"] = [str(x) for x in labelers]
    return out


def disagreements(current: pd.DataFrame) -> pd.DataFrame:
    if current.empty:
        return pd.DataFrame(columns=["db", "sae", "feature", "verdicts"])
    g = current.groupby(["db", "sae", "feature"])
    rows = [
        (db, sae, f, "; ".join(f"{r.labeler}: {r.verdict}" for r in grp.itertuples()))
        for (db, sae, f), grp in g
        if grp["verdict"].nunique() > 1
    ]
    return pd.DataFrame(rows, columns=["db", "sae", "feature", "verdicts"])


# ---- export / import ----


def _format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json", ".parquet"):
        raise UserError(f"{path}: use a file ending in .csv, .json or .parquet")
    return suffix[1:]


def to_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    df = df[COLUMNS].copy()
    df["created_at"] = pd.to_datetime(df["created_at"]).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    if fmt == "json":
        return json.dumps(df.replace({np.nan: None}).to_dict("records"), indent=1, default=str).encode()
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def export_labels(file: str, labels_db: str, history: bool = True) -> int:
    fmt = _format(file)
    df = all_labels(labels_db) if history else latest(labels_db)
    Path(file).write_bytes(to_bytes(df, fmt))
    return len(df)


def read_table(data: bytes, fmt: str) -> pd.DataFrame:
    import io

    try:
        if fmt == "csv":
            df = pd.read_csv(io.BytesIO(data), dtype={"description": "string"})
        elif fmt == "json":
            df = pd.DataFrame(json.loads(data.decode()))
        else:
            df = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"could not read the labels file: {str(e).splitlines()[0][:200]}") from None
    missing = set(COLUMNS) - set(df.columns) - {"uid", "created_at"}
    if missing:
        raise UserError(f"labels file lacks column(s) {sorted(missing)}")
    return df


def import_table(df: pd.DataFrame, labels_db: str) -> int:
    """Append rows not already present (by uid); every row is validated first, all or nothing."""
    rows = []
    for rec in df.replace({np.nan: None}).to_dict("records"):
        lab = Label(
            db=str(rec["db"]),
            run_id=str(rec["run_id"]),
            sae=str(rec["sae"]),
            feature=int(rec["feature"]),
            verdict=str(rec["verdict"]),
            labeler=str(rec["labeler"] or ""),
            description=rec.get("description"),
            confidence=None if rec.get("confidence") is None else int(rec["confidence"]),
        )
        created = (
            pd.to_datetime(rec.get("created_at"))
            if rec.get("created_at")
            else pd.Timestamp.now(tz="UTC").tz_localize(None)
        )
        rows.append(
            [
                rec.get("uid") or uuid.uuid4().hex,
                lab.db,
                lab.run_id,
                lab.sae,
                lab.feature,
                lab.verdict,
                lab.description,
                lab.confidence,
                lab.labeler,
                created.to_pydatetime(),
            ]
        )
    if not rows:
        return 0
    new = pd.DataFrame(rows, columns=COLUMNS)

    def write(con):
        con.register("incoming", new)
        con.execute("BEGIN")
        before = con.execute("SELECT count(*) FROM labels").fetchone()[0]
        con.execute(
            f"INSERT INTO labels SELECT {', '.join(COLUMNS)} FROM incoming WHERE uid NOT IN (SELECT uid FROM labels)"
        )
        after = con.execute("SELECT count(*) FROM labels").fetchone()[0]
        con.execute("COMMIT")
        return after - before

    return _write(labels_db, write)


def import_labels(file: str, labels_db: str) -> int:
    if not Path(file).exists():
        raise UserError(f"{file} does not exist")
    return import_table(read_table(Path(file).read_bytes(), _format(file)), labels_db)
