"""The Search page's phrase search (queries.search) against a brute-force reading of every top
example's window, and its bound for texts too common to search in context."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from backend.store import queries

pytestmark = pytest.mark.integration


def brute_force(db: str, text: str, context: bool = True) -> pd.DataFrame:
    """(sae, feature, token_hits, hits, max_value) from each top example's own window text."""
    con = duckdb.connect(db, read_only=True)
    vocab = np.array([t.lower() for t in con.execute("SELECT token FROM vocab ORDER BY token_id").df()["token"]])
    seqs = {int(s): np.asarray(t) for s, t in con.execute("SELECT seq, tokens FROM sequences").fetchall()}
    ex = con.execute("SELECT sae, feature, rank, seq, pos, ctx_start, value, acts FROM examples WHERE kind = 0").df()
    con.close()
    needle, rows = text.lower(), []
    for r in ex.itertuples():
        window = seqs[r.seq][r.ctx_start : r.ctx_start + len(r.acts)]
        token = needle in vocab[seqs[r.seq][r.pos]]
        if token or (context and needle in "".join(vocab[window])):
            rows.append((r.sae, r.feature, r.rank, token, r.value))
    hits = pd.DataFrame(rows, columns=["sae", "feature", "rank", "token", "value"])
    out = hits.groupby(["sae", "feature"]).agg(
        token_hits=("token", "sum"), hits=("rank", "nunique"), max_value=("value", "max")
    )
    if not context:
        out["hits"] = out["token_hits"]
        out = out[out["token_hits"] > 0]
    return out.reset_index().sort_values(["sae", "feature"]).reset_index(drop=True)


def phrases(db: str) -> list[str]:
    """A common token, a two-token phrase spanning a token boundary, and one in capitals."""
    con = duckdb.connect(db, read_only=True)
    vocab = con.execute("SELECT token FROM vocab ORDER BY token_id").df()["token"].to_numpy()
    first = np.asarray(con.execute("SELECT tokens FROM sequences ORDER BY seq LIMIT 1").fetchone()[0])
    ids, counts = np.unique(
        np.concatenate([np.asarray(t) for (t,) in con.execute("SELECT tokens FROM sequences").fetchall()]),
        return_counts=True,
    )
    con.close()
    common = next(vocab[i] for i in ids[np.argsort(-counts)] if vocab[i].strip().isalpha())
    pair = next("".join(vocab[first[i : i + 2]]) for i in range(1, len(first) - 2) if vocab[first[i]].isalpha())
    return [common.strip(), pair, common.strip().upper()]


def test_search_equals_each_windows_own_text(tiny_db, monkeypatch):
    queries.clear_caches()
    for text in phrases(tiny_db):
        want = brute_force(tiny_db, text)
        got = queries.search(tiny_db, text, None, 10_000)
        got = got[["sae", "feature", "token_hits", "hits", "max_value"]].sort_values(["sae", "feature"])
        assert len(want) > 0, text
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, check_exact=False)
    # a text more common than COMMON_PHRASE is matched as the activating token only, and said so
    text = phrases(tiny_db)[0]
    monkeypatch.setattr(queries, "COMMON_PHRASE", 3)
    queries.clear_caches()
    assert queries.occurrences(tiny_db, text, None) > 3
    got = queries.search(tiny_db, text, None, 10_000)
    got = got[["sae", "feature", "token_hits", "hits", "max_value"]].sort_values(["sae", "feature"])
    want = brute_force(tiny_db, text, context=False)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, check_exact=False)
    queries.clear_caches()
