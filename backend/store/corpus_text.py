"""The corpus as lower-cased text, for the Search page: decoded once when a run is written
(`sequence_text`, one row per sequence), so a search in a fresh process reads text instead of
decoding millions of tokens; a match is mapped back to tokens only in the sequences it lies in.

Tokens are lower-cased one by one and joined, so a byte offset in a sequence's text falls on a
token boundary exactly where the sum of its tokens' lower-cased lengths does. A UTF-8 needle
matches a UTF-8 text only at character boundaries, so bytes search as text would.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa

SLICE = 2**20
"""tokens decoded per gather (the byte index takes 8 bytes per text byte)"""


class Vocab:
    """A vocabulary's lower-cased UTF-8 bytes, laid end to end, for gathers by token id."""

    def __init__(self, tokens: Sequence[str]):
        encoded = [t.lower().encode() for t in tokens]
        self.lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.text = b"".join(encoded)
        self.bytes = np.frombuffer(self.text, dtype=np.uint8)

    def offsets(self, ids: np.ndarray) -> np.ndarray:
        """Where each token of `ids` starts in their joined text, and one past the end."""
        return np.concatenate([[0], np.cumsum(self.lengths[ids])])

    def decode(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the joined lower-cased text of `ids` as bytes, `offsets(ids)`), by array gathers: a
        corpus of 20M tokens in about 2 s, where a Python pass per token took minutes."""
        offsets = self.offsets(ids)
        lens = self.lengths[ids]
        text = np.empty(int(offsets[-1]), dtype=np.uint8)
        for lo in range(0, len(ids), SLICE):
            hi = min(lo + SLICE, len(ids))
            a, b = offsets[lo], offsets[hi]
            at = np.repeat(self.starts[ids[lo:hi]] - (offsets[lo:hi] - a), lens[lo:hi]) + np.arange(b - a)
            text[a:b] = self.bytes[at]
        return text, offsets


def sequence_text(con: duckdb.DuckDBPyConnection, run_id: str) -> pa.Table:
    """(run_id, seq, text) of every sequence of the run, from its `sequences` and `vocab` rows."""
    vocab = con.execute("SELECT token FROM vocab WHERE run_id = ? ORDER BY token_id", [run_id]).fetchnumpy()["token"]
    seqs = con.sql("SELECT seq, tokens FROM sequences WHERE run_id = ? ORDER BY seq", params=[run_id])
    seqs = seqs.to_arrow_table()
    tokens = seqs["tokens"].combine_chunks()
    ids = tokens.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    text, offsets = Vocab(list(vocab)).decode(ids)
    bounds = offsets[tokens.offsets.to_numpy().astype(np.int64) - tokens.offsets[0].as_py()]
    texts = pa.LargeStringArray.from_buffers(len(seqs), pa.py_buffer(bounds), pa.py_buffer(text))
    texts.validate(full=True)  # valid UTF-8: joined tokens always are; checked, not assumed
    return pa.table({"run_id": pa.array([run_id] * len(seqs), pa.string()), "seq": seqs["seq"], "text": texts})


def write(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Fill `sequence_text` for a run whose `sequences` and `vocab` are written."""
    con.register("tmp_text", sequence_text(con, run_id))
    try:
        con.execute("INSERT INTO sequence_text SELECT run_id, seq, text FROM tmp_text ORDER BY seq")
    finally:
        con.unregister("tmp_text")
