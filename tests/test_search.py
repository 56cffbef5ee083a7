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


def _ranked_and_cut(db: str, text: str) -> int:
    """Results come best first (matches as the activating token, then all matches, then the
    highest activation; ties by SAE and feature), and a shorter list is the longer one's head."""
    full = queries.search(db, text, None, 10_000)
    key = list(zip(-full["token_hits"], -full["hits"], -full["max_value"], full["sae"], full["feature"]))
    assert key == sorted(key)
    cut = len(full) // 2
    pd.testing.assert_frame_equal(queries.search(db, text, None, cut), full.head(cut), check_dtype=False)
    return len(full)


def test_search_equals_each_windows_own_text(tiny_db, monkeypatch):
    queries.clear_caches()
    cut_tested = []
    for text in phrases(tiny_db):
        want = brute_force(tiny_db, text)
        got = queries.search(tiny_db, text, None, 10_000)
        got = got[["sae", "feature", "token_hits", "hits", "max_value"]].sort_values(["sae", "feature"])
        assert len(want) > 0, text
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, check_exact=False)
        cut_tested.append(_ranked_and_cut(tiny_db, text))
    assert max(cut_tested) > 10
    # a text more common than COMMON_PHRASE is matched as the activating token only, and said so
    text = phrases(tiny_db)[0]
    monkeypatch.setattr(queries, "COMMON_PHRASE", 3)
    queries.clear_caches()
    assert queries.occurrences(tiny_db, text, None) > 3
    got = queries.search(tiny_db, text, None, 10_000)
    got = got[["sae", "feature", "token_hits", "hits", "max_value"]].sort_values(["sae", "feature"])
    want = brute_force(tiny_db, text, context=False)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, check_exact=False)
    assert _ranked_and_cut(tiny_db, text) > 10
    queries.clear_caches()


def _sequences(db: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    con = duckdb.connect(db, read_only=True)
    vocab = np.array([t.lower() for t in con.execute("SELECT token FROM vocab ORDER BY token_id").df()["token"]])
    seqs = {int(s): np.asarray(t) for s, t in con.execute("SELECT seq, tokens FROM sequences ORDER BY seq").fetchall()}
    con.close()
    return vocab, seqs


def test_phrase_spans_are_each_sequences_own_occurrences_and_never_cross_two(tiny_db, monkeypatch):
    """Every occurrence of a text, placed on tokens, against each sequence's own text; a text made
    of one sequence's last token and the next one's first is found only where it lies inside one.
    The search reads the text written with the run: nothing is decoded when it runs."""
    from backend.store import corpus_text

    vocab, seqs = _sequences(tiny_db)
    ids = sorted(seqs)
    straddle = vocab[seqs[ids[0]][-1]] + vocab[seqs[ids[1]][0]]

    def brute(needle: str) -> list[tuple[int, int, int]]:
        out = []
        for s, toks in seqs.items():
            starts = np.concatenate([[0], np.cumsum([len(vocab[t].encode()) for t in toks])])
            text = "".join(vocab[toks]).encode()
            at = text.find(needle.encode())
            while at != -1:
                first = int(np.searchsorted(starts, at, side="right") - 1)
                last = max(first, int(np.searchsorted(starts, at + len(needle.encode()), side="left") - 1))
                out.append((s, first, last))
                at = text.find(needle.encode(), at + 1)
        return sorted(out)

    def no_decoding(*a, **k):
        raise AssertionError("a search decoded the corpus")

    monkeypatch.setattr(corpus_text.Vocab, "decode", no_decoding)
    run_id = queries.saes(tiny_db)["run_id"].iloc[0]
    queries.clear_caches()
    for needle in [*phrases(tiny_db)[:2], straddle, "zzz-not-in-the-corpus", "e e", "ss"]:
        got = queries._phrase_spans(tiny_db, run_id, needle)
        assert sorted(got.itertuples(index=False, name=None)) == brute(needle.lower()), needle
        # counted without listing (a text that can overlap itself, "e e" or "ss", is listed): the same number
        assert queries._occurrence_count(tiny_db, run_id, needle) == len(got), needle
    assert len(queries._phrase_spans(tiny_db, run_id, phrases(tiny_db)[0])) > 10


def test_search_tables_are_written_with_the_run_sorted_for_search(tiny_db):
    """`sequence_text` is each sequence's lower-cased tokens joined; `examples_by_seq` holds every
    top example once, with its activating token, in sequence order, so a search reads the row
    groups of a few sequences."""
    vocab, seqs = _sequences(tiny_db)
    con = duckdb.connect(tiny_db, read_only=True)
    texts = dict(con.execute("SELECT seq, text FROM sequence_text").fetchall())
    assert texts == {s: "".join(vocab[t]) for s, t in seqs.items()}
    cols = "seq, sae, feature, rank, pos, ctx_start, value"
    by_seq = con.execute(f"SELECT {cols} FROM examples_by_seq").df()
    top = con.execute(f"SELECT {cols} FROM examples WHERE kind = 0").df()
    con.close()
    assert len(by_seq) > 100 and by_seq["seq"].is_monotonic_increasing
    con = duckdb.connect(tiny_db, read_only=True)
    token_ids = con.execute("SELECT token_id FROM examples_by_seq").df()["token_id"]
    con.close()
    assert list(token_ids) == [seqs[s][p] for s, p in zip(by_seq["seq"], by_seq["pos"])]  # the activating token
    key = ["sae", "feature", "rank"]
    pd.testing.assert_frame_equal(
        by_seq.sort_values(key).reset_index(drop=True), top.sort_values(key).reset_index(drop=True)
    )
