"""The read side: small functions that return DataFrames for the pages, cached per database file.

Connections are read-only and shared per file (one cursor per call, as DuckDB asks for threads)
and closed again after IDLE_CLOSE_S without use, so a precompute into a file the dashboard shows
can take its write lock. Results are memoised on (file, modification time, arguments): a
rebuilt database is picked up without restarting the app. No Streamlit here.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from backend.config import splice_members
from backend.density import FIRING_THRESHOLDS, density, log10_density
from backend.errors import UserError
from backend.paths import data_dir
from backend.store import corpus_text, datafolder, schema
from backend.store.records import FeatureInfo, SaeDiagnostics, SaeInfo
from backend.store.schema import COMPLETE

IDLE_CLOSE_S = 3.0
"""seconds after its last query that a read connection is closed (writers wait for that)"""


def _missing(path: str) -> UserError:
    return UserError(f"database {Path(path).name} does not exist; build one with `python -m backend demo --no-serve`")


def _without_paths(message: str, path: str) -> str:
    """A DuckDB message fit for a page: the server's paths to the file become its name."""
    for full in {str(Path(path).resolve()), str(path)}:
        message = message.replace(full, Path(path).name)
    return message


@functools.lru_cache(maxsize=256)
def _validity(path: str, mtime: float, size: int) -> str | None:
    """Why a file is not a readable feature database (None: it is), memoised per version of it."""
    why = datafolder.file_problem(path)
    if why:
        return why
    try:
        with datafolder.connect_read(path) as con:
            return schema.problem(con)
    except duckdb.Error as e:
        first = _without_paths(str(e).splitlines()[0], path)
        if "lock" in first.lower():
            return None  # a precompute is writing it right now; readers will retry
        return f"DuckDB cannot open it ({first})"


def problem(path: str | Path) -> str | None:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return "it does not exist"
    if p.is_symlink() or not p.is_file():
        return datafolder.file_problem(p)
    st = p.stat()
    return _validity(str(p), st.st_mtime, st.st_size)


def list_databases() -> list[str]:
    """Feature databases this version can read in the data folder (file names), newest first.
    Other .duckdb files (junk, older layouts, a labels file of older versions) are not offered."""
    d = data_dir()
    if not d.is_dir():
        return []
    files = [p for p in d.glob("*.duckdb") if p.is_file() and not p.is_symlink()]
    good = [p for p in files if problem(p) is None]
    return [p.name for p in sorted(good, key=lambda p: (-p.stat().st_mtime, p.name))]


def resolve_database(name: str) -> str:
    """A database name from a URL, checked: a plain file name of a readable database in the data folder."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".duckdb"):
        raise UserError(f"{name!r} is not a database name: use a file name like demo.duckdb from the data folder")
    path = data_dir() / name
    if not path.is_file() and not path.is_symlink():
        raise UserError(f"no database {name!r} in the data folder")
    why = problem(path)
    if why:
        raise UserError(f"{name} is not a feature database this dashboard can read: {why}")
    return str(path)


class _Pool:
    """One read-only connection per file, closed when idle so writers can take the file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[str, list] = {}  # path -> [connection, mtime, users, last_used]
        self._reaper: threading.Thread | None = None

    @contextmanager
    def cursor(self, path: str):
        if not Path(path).exists():
            raise _missing(path)
        mtime = Path(path).stat().st_mtime
        with self._lock:
            entry = self._open.get(path)
            if entry is not None and entry[1] != mtime and entry[2] == 0:
                entry[0].close()  # the file changed under us: reopen
                entry = None
            if entry is None:
                entry = [self._connect(path), mtime, 0, time.monotonic()]
                self._open[path] = entry
            entry[2] += 1
            self._start_reaper()
        try:
            yield entry[0].cursor()
        finally:
            with self._lock:
                entry[2] -= 1
                entry[3] = time.monotonic()

    @staticmethod
    def _connect(path: str, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
        """Open read-only; while a precompute holds the write lock (moments), wait for it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                con = datafolder.connect_read(path)
                break
            except duckdb.Error as e:
                first = _without_paths(str(e).splitlines()[0], path)
                if "lock" not in first.lower() or time.monotonic() > deadline:
                    raise UserError(f"cannot open {Path(path).name} ({first})") from None
                time.sleep(0.2)
        schema.check(con, path)
        return con

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, daemon=True, name="duckdb-idle-close")
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE_CLOSE_S / 3)
            with self._lock:
                for path, entry in list(self._open.items()):
                    if entry[2] == 0 and time.monotonic() - entry[3] > IDLE_CLOSE_S:
                        entry[0].close()
                        del self._open[path]
                if not self._open:
                    self._reaper = None
                    return

    def close_all(self) -> None:
        with self._lock:
            for entry in self._open.values():
                if entry[2] == 0:
                    entry[0].close()
            self._open = {k: v for k, v in self._open.items() if v[2] > 0}


_pool = _Pool()


ARCHITECTURE_NAMES = {
    "standard": "ReLU (L1)",
    "topk": "TopK",
    "batchtopk": "BatchTopK",
    "jumprelu": "JumpReLU",
    "gated": "Gated",
}
"""how an SAE's architecture reads on a page: sae_lens records a ReLU SAE with an L1 penalty by
its class name, "standard"; names not here are shown as recorded"""


def _named(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("architecture", "family"):
        if col in df.columns and len(df):
            df[col] = df[col].map(lambda a: ARCHITECTURE_NAMES.get(a, a) if isinstance(a, str) else a)
    return df


def _df(path: str, sql: str, params=None) -> pd.DataFrame:
    """Rows of a query; architectures (and SAE families) under the names people read."""
    with _pool.cursor(path) as cur:
        try:
            return _named(cur.execute(sql, params or []).df())
        except duckdb.CatalogException:
            raise UserError(f"{Path(path).name} is not a feature database made by this tool") from None
        except duckdb.Error as e:  # a file damaged after it was checked
            first = _without_paths(str(e).splitlines()[0], path)
            raise UserError(f"{Path(path).name} cannot be read: {first}") from None


_CACHED: list = []


def cached(fn):
    """Memoise on (path, its mtime, args): a rebuilt file invalidates its entries."""
    inner = functools.lru_cache(maxsize=512)(lambda path, mtime, *a: fn(path, *a))

    @functools.wraps(fn)
    def wrapper(path: str, *args):
        if not Path(path).exists():
            raise _missing(path)
        return inner(path, Path(path).stat().st_mtime, *args)

    wrapper.cache_clear = inner.cache_clear
    _CACHED.append(wrapper)
    return wrapper


def clear_caches() -> None:
    _pool.close_all()
    _validity.cache_clear()
    for fn in _CACHED:
        fn.cache_clear()


# ---- whole database ----


@cached
def runs(path: str) -> pd.DataFrame:
    return _df(path, "SELECT * EXCLUDE (config, versions) FROM runs ORDER BY started_at")


@cached
def saes(path: str) -> pd.DataFrame:
    """Complete SAEs, shallow layers first. `recon_tokens`: the tokens reconstruction error was
    measured on (precompute --recon-every samples batches)."""
    return _df(
        path,
        f"""
        SELECT s.* EXCLUDE (sae_config), s.n_dead / s.d_sae AS dead_frac, s.n_dense / s.d_sae AS dense_frac,
               r.model, r.corpus, r.context_len,
               coalesce((SELECT sum(p.n) FROM position_error p WHERE p.sae = s.sae), 0)::BIGINT AS recon_tokens
        FROM saes s JOIN runs r USING (run_id) WHERE {COMPLETE} ORDER BY s.depth, s.sae""",
    )


def database_info(path: str) -> dict:
    if not Path(path).exists():
        raise UserError(f"database {path} does not exist")
    why = datafolder.file_problem(Path(path).resolve())  # the CLI may name a link; its target is checked
    if why:
        raise UserError(f"{path} is not a feature database this tool can read: {why}")
    return {"runs": runs(path).to_dict("records"), "saes": saes(path).to_dict("records")}


def sae_row(path: str, sae: str) -> SaeInfo:
    df = saes(path)
    row = df[df["sae"] == sae]
    if row.empty:
        raise UserError(
            f"no SAE {sae!r} in this database (it has {', '.join(df['sae'][:6])}{' ...' if len(df) > 6 else ''})"
        )
    return SaeInfo.from_row(row.iloc[0].to_dict())


@cached
def vocab(path: str, run_id: str) -> np.ndarray:
    df = _df(path, "SELECT token FROM vocab WHERE run_id = ? ORDER BY token_id", [run_id])
    return df["token"].to_numpy(dtype=object)


@cached
def uncounted(path: str, run_id: str) -> np.ndarray:
    """Per token id: True where positions holding it were left out of the statistics."""
    df = _df(
        path,
        """SELECT v.special AND NOT coalesce(TRY_CAST(json_extract(r.config, '$.include_special') AS BOOLEAN), false)
                  AS uncounted
           FROM vocab v JOIN runs r USING (run_id) WHERE v.run_id = ? ORDER BY v.token_id""",
        [run_id],
    )
    return df["uncounted"].to_numpy(dtype=bool)


def _per_sae_rows(path: str, table: str, within: str) -> pd.DataFrame:
    """All rows of a per-SAE table for the complete SAEs, with each SAE's hook, depth and
    architecture, shallow SAEs first."""
    return _df(
        path,
        f"""
        SELECT t.*, s.hook, s.depth, s.architecture FROM {table} t JOIN saes s USING (sae)
        JOIN runs r USING (run_id) WHERE {COMPLETE} ORDER BY s.depth, t.sae, t.{within}""",
    )


@cached
def density_hist(path: str) -> pd.DataFrame:
    return _per_sae_rows(path, "density_hist", "bin_lo")


@cached
def position_error(path: str) -> pd.DataFrame:
    return _per_sae_rows(path, "position_error", "pos")


# ---- one SAE ----


def count_column(firing: str) -> str:
    """The features column that counts activations as `firing` (density.FIRING_THRESHOLDS) does."""
    if firing not in FIRING_THRESHOLDS:
        raise UserError(f"firing threshold {firing!r}: use one of {', '.join(FIRING_THRESHOLDS)}")
    return "count" if firing == "any" else f"count_ge_{firing}"


@cached
def densities(path: str, sae: str, firing: str = "any") -> pd.DataFrame:
    """feature, count, density and log10_density of every feature, as `features` counts them:
    what the histograms need, without the text column that is most of a wide SAE's table."""
    s = sae_row(path, sae)
    count = count_column(firing)
    df = _df(path, f"SELECT feature, {count} AS count, density FROM features WHERE sae = ? ORDER BY feature", [sae])
    if firing != "any":
        df["density"] = density(df["count"], s.n_tokens)
    df["log10_density"] = log10_density(df["density"].to_numpy())
    return df


@cached
def features(path: str, sae: str, firing: str = "any") -> pd.DataFrame:
    """Every feature of an SAE (without histograms), for the layer table and its filters.
    `firing`: what counts as active (density.FIRING_THRESHOLDS): any nonzero activation, or
    one of at least 1% / 10% of the feature's max; count and density follow it."""
    s = sae_row(path, sae)
    count = count_column(firing)
    df = _df(
        path,
        f"""SELECT feature, {count} AS count, density AS stored_density, mean_act, max_act, top_tokens
            FROM features WHERE sae = ? ORDER BY feature""",
        [sae],
    )
    # the stored density, or for a firing threshold the same rule over the thresholded count
    df["density"] = df["stored_density"] if firing == "any" else density(df["count"], s.n_tokens)
    df["log10_density"] = log10_density(df["density"].to_numpy())
    return df[["feature", "count", "density", "mean_act", "max_act", "top_tokens", "log10_density"]]


def _features_of(path: str, which: pd.DataFrame, columns: str) -> pd.DataFrame:
    """sae, feature and `columns` (of `features f`) for the (sae, feature) pairs in `which`, read
    for those rows only: a few thousand labeled or found features of a suite's millions."""
    with _pool.cursor(path) as cur:
        cur.register("which", which[["sae", "feature"]].drop_duplicates())
        return cur.execute(f"SELECT f.sae, f.feature, {columns} FROM features f JOIN which w USING (sae, feature)").df()


def counts_of(path: str, which: pd.DataFrame) -> pd.DataFrame:
    """count, density and log10_density of the (sae, feature) pairs in `which`."""
    if which.empty:
        return pd.DataFrame(columns=["sae", "feature", "count", "density", "log10_density"])
    df = _features_of(path, which, "f.count, f.density")
    df["log10_density"] = log10_density(df["density"].to_numpy())
    return df


@cached
def feature(path: str, sae: str, f: int) -> FeatureInfo:
    s = sae_row(path, sae)
    if not 0 <= f < s.d_sae:
        raise UserError(f"feature {f} is out of range: {sae} has features 0 .. {s.d_sae - 1}")
    df = _df(path, "SELECT * FROM features WHERE sae = ? AND feature = ?", [sae, f])
    row = df.iloc[0].to_dict()
    row["hist"] = np.asarray(row["hist"], dtype=np.int64)
    return FeatureInfo.from_row(row)


@cached
def examples(path: str, sae: str, f: int) -> pd.DataFrame:
    """Examples with their context decoded: `tokens` (display strings), `acts` and `counted`
    (False where the position was left out of the statistics: special tokens) align."""
    s = sae_row(path, sae)
    df = _df(
        path,
        """SELECT kind, rank, quantile, seq, pos, ctx_start, value, acts FROM examples
           WHERE sae = ? AND feature = ? ORDER BY kind, quantile DESC, rank""",
        [sae, f],
    )
    # the sequences in a second query by their numbers: joined, DuckDB read every sequence's
    # tokens (20M of them at Gemma Scope's scale) to find the few it needs
    seqs = _df(
        path,
        "SELECT seq, tokens FROM sequences WHERE run_id = ? AND seq IN (SELECT unnest(?::INTEGER[]))",
        [s.run_id, sorted({int(q) for q in df["seq"]})],
    )
    tokens = {int(q): np.asarray(t, dtype=np.int64) for q, t in zip(seqs["seq"], seqs["tokens"])}
    df["token_ids"] = [
        tokens[int(q)][int(c) : int(c) + len(a)] for q, c, a in zip(df["seq"], df["ctx_start"], df["acts"])
    ]
    strings, skip = vocab(path, s.run_id), uncounted(path, s.run_id)
    df["tokens"] = [list(strings[np.asarray(ids, dtype=np.int64)]) for ids in df["token_ids"]]
    df["counted"] = [~skip[np.asarray(ids, dtype=np.int64)] for ids in df["token_ids"]]
    df["acts"] = [np.asarray(a, dtype=np.float32) for a in df["acts"]]
    return df


@cached
def token_effects(path: str, sae: str, f: int) -> pd.DataFrame:
    s = sae_row(path, sae)
    df = _df(
        path,
        """SELECT direction, rank, token_id, value FROM token_effects
                      WHERE sae = ? AND feature = ? ORDER BY direction DESC, rank""",
        [sae, f],
    )
    df["token"] = vocab(path, s.run_id)[df["token_id"].to_numpy()] if len(df) else []
    return df


@cached
def neighbours(path: str, sae: str, f: int) -> pd.DataFrame:
    return _df(
        path,
        """
        SELECT n.rank, n.other AS feature, n.cosine, x.density, x.max_act, x.top_tokens
        FROM neighbours n JOIN features x ON x.sae = n.sae AND x.feature = n.other
        WHERE n.sae = ? AND n.feature = ? ORDER BY n.rank""",
        [sae, f],
    )


@cached
def _corpus(path: str, run_id: str) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The run's searchable text (corpus_text), all sequences end to end: (the text, where each
    sequence's text starts plus one past the end, each sequence's id)."""
    with _pool.cursor(path) as cur:
        rows = cur.sql("SELECT seq, text FROM sequence_text WHERE run_id = ?", params=[run_id]).to_arrow_table()
    parts, bounds, size = [], [], 0
    for chunk in rows["text"].chunks:  # the chunks' bytes joined once, without an arrow copy first
        wide = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=wide)[chunk.offset : chunk.offset + len(chunk) + 1]
        offsets = offsets.astype(np.int64)
        if chunk.buffers()[2] is not None:
            parts.append(memoryview(chunk.buffers()[2])[offsets[0] : offsets[-1]])
        bounds.append(offsets[:-1] - offsets[0] + size)
        size += int(offsets[-1] - offsets[0])
    bounds = np.concatenate([*bounds, [size]]).astype(np.int64)
    return b"".join(parts), bounds, rows["seq"].to_numpy().astype(np.int64)


@cached
def _vocab_text(path: str, run_id: str) -> corpus_text.Vocab:
    return corpus_text.Vocab(list(vocab(path, run_id)))


def _find_all(haystack: bytes, needle: bytes) -> np.ndarray:
    """Where `needle` starts in `haystack`, overlapping occurrences too (none for an empty one)."""
    found, start = [], haystack.find(needle) if needle else -1
    while start != -1:
        found.append(start)
        start = haystack.find(needle, start + 1)
    return np.asarray(found, dtype=np.int64)


@cached
def _occurrences(path: str, run_id: str, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Every occurrence of `text` (case-insensitive, overlapping ones too) within one sequence of
    the run's corpus: (its byte in `_corpus`'s text, the row of its sequence there)."""
    corpus, bounds, _ = _corpus(path, run_id)
    needle = text.lower().encode()
    at = _find_all(corpus, needle)
    k = np.searchsorted(bounds, at, side="right") - 1
    inside = at + len(needle) <= bounds[k + 1]  # the text of two sequences meets in `corpus`, not in the data
    return at[inside], k[inside]


@cached
def _occurrence_count(path: str, run_id: str, text: str) -> int:
    """len(_occurrences(...)[0]) without listing them: a text found a million times takes 0.7 s
    to list at Gemma scale and 0.1 s to count. bytes.count skips overlapping occurrences, which
    only a text whose start repeats as its end can have; those, and a corpus with a sequence
    shorter than the text, are listed instead. Occurrences across two sequences are taken off."""
    corpus, bounds, _ = _corpus(path, run_id)
    needle = text.lower().encode()
    m = len(needle)
    if not m:
        return 0
    if any(needle[:k] == needle[-k:] for k in range(1, m)) or (m > 1 and np.diff(bounds).min(initial=m) < m):
        return len(_occurrences(path, run_id, text)[0])
    # a window of m - 1 bytes each side of a boundary holds only occurrences that cross it
    return corpus.count(needle) - sum(corpus[b - m + 1 : b + m - 1].count(needle) for b in bounds[1:-1] if m > 1)


@cached
def _phrase_spans(path: str, run_id: str, text: str) -> pd.DataFrame:
    """(seq, first token, last token) of every occurrence of `text` within one sequence of the
    run's corpus. Only the sequences it occurs in are read as tokens, to place it on them."""
    _, bounds, seq_ids = _corpus(path, run_id)
    at, k = _occurrences(path, run_id, text)
    out = pd.DataFrame({"seq": seq_ids[k], "first": 0, "last": 0}, dtype="int64")
    if not len(at):
        return out
    with _pool.cursor(path) as cur:
        cur.register("wanted", pd.DataFrame({"seq": np.unique(seq_ids[k])}))
        seqs = cur.sql(
            "SELECT s.seq, s.tokens FROM sequences s JOIN wanted w USING (seq) WHERE s.run_id = ? ORDER BY s.seq",
            params=[run_id],
        ).to_arrow_table()
    tokens = seqs["tokens"].combine_chunks()
    sizes = np.diff(tokens.offsets.to_numpy())
    offsets = _vocab_text(path, run_id).offsets(tokens.flatten().to_numpy(zero_copy_only=False).astype(np.int64))
    first_token = np.concatenate([[0], np.cumsum(sizes)])  # of each read sequence, in `offsets`
    row = np.searchsorted(seqs["seq"].to_numpy(), seq_ids[k])
    local = at - bounds[k] + offsets[first_token[row]]  # the occurrence's byte in the read sequences' text
    first = np.searchsorted(offsets, local, side="right") - 1
    last = np.maximum(first, np.searchsorted(offsets, local + len(text.lower().encode()), side="left") - 1)
    out["first"], out["last"] = first - first_token[row], last - first_token[row]
    return out


@cached
def _tokens_containing(path: str, run_id: str, text: str) -> pd.DataFrame:
    """The token ids whose own (lower-cased) text contains `text`: an occurrence that lies inside
    one token is an occurrence at each position holding one of these. Found in the vocabulary's
    lower-cased text that `_vocab_text` keeps, not by lower-casing every token again per text."""
    v = _vocab_text(path, run_id)
    needle = text.lower().encode()
    at = _find_all(v.text, needle)
    k = np.searchsorted(v.starts, at, side="right") - 1
    inside = at + len(needle) <= v.starts[k] + v.lengths[k]  # not across two tokens laid end to end
    return pd.DataFrame({"token_id": np.unique(k[inside]).astype(np.int32)})


# An example's window is [ctx_start, min(pos + context_right, context_len - 1)] (tables.examples_table),
# read off its columns rather than from len(acts), which would read every window's activations.
_SEARCH_SQL = """
    SELECT e.sae, e.feature,
           count(DISTINCT e.rank) FILTER (WHERE s.first = e.pos AND s.last = e.pos) AS token_hits,
           count(DISTINCT e.rank) AS hits, max(e.value) AS max_value
    FROM examples_by_seq e JOIN saes a ON a.sae = e.sae JOIN runs r ON r.run_id = a.run_id JOIN spans s ON s.seq = e.seq
    WHERE e.sae IN (SELECT unnest(?::VARCHAR[]))
      AND s.first >= e.ctx_start AND s.last <= least(e.pos + a.context_right, r.context_len - 1)
    GROUP BY ALL"""


_TOKEN_SQL = """
    SELECT e.sae, e.feature, count(*) AS token_hits, count(*) AS hits, max(e.value) AS max_value
    FROM examples_by_seq e JOIN tokens t ON t.token_id = e.token_id
    WHERE e.sae IN (SELECT unnest(?::VARCHAR[]))
    GROUP BY ALL"""
"""examples_by_seq holds each top example once, so a count of rows is one of distinct ranks"""

_ORDER = {"token_hits": False, "hits": False, "max_value": False, "sae": True, "feature": True}
"""search's order (column: ascending): by matching top examples, as the activating token first;
ties by name. Written out for DuckDB as _RANKED."""
_RANKED = ", ".join(c if up else f"{c} DESC" for c, up in _ORDER.items())

COMMON_PHRASE = 20_000
"""a text found more often than this in a run's corpus is matched only as an example's
activating token: in context, every occurrence pairs with every example of its sequence (at
Gemma Scope's scale a word on 4% of the tokens took 100 s that way, against seconds)"""


@cached
def occurrences(path: str, text: str, sae: str | None) -> int:
    """How often `text` occurs in the corpora of the runs `search` looks in."""
    cands = saes(path) if sae is None else saes(path)[saes(path)["sae"] == sae]
    return sum(_occurrence_count(path, run_id, text.strip()) for run_id in cands["run_id"].unique())


@cached
def search(path: str, text: str, sae: str | None, limit: int = 200) -> pd.DataFrame:
    """Features whose top examples contain `text`: as the activating token itself (ranked first),
    or anywhere in the example's context (not for a text more common than COMMON_PHRASE in its
    run's corpus). Ranked by how many top examples match."""
    text = text.strip()
    cols = ["sae", "feature", "token_hits", "hits", "max_value", "density", "top_tokens"]
    if not text:
        return pd.DataFrame(columns=cols)
    found = []
    cands = saes(path)
    if sae is not None:
        cands = cands[cands["sae"] == sae]
    for run_id, group in cands.groupby("run_id"):
        n = _occurrence_count(path, run_id, text)
        if not n:
            continue
        with _pool.cursor(path) as cur:
            if n <= COMMON_PHRASE:
                cur.register("spans", _phrase_spans(path, run_id, text))
                sql = _SEARCH_SQL
            else:
                cur.register("tokens", _tokens_containing(path, run_id, text))
                sql = _TOKEN_SQL
            # ranked and cut here: a common text matches millions of features, read on only for the best
            ranked = f"SELECT * FROM ({sql}) ORDER BY {_RANKED} LIMIT ?"
            found.append(cur.execute(ranked, [list(group["sae"]), limit]).df())
    if not found:
        return pd.DataFrame(columns=cols)
    hits = pd.concat(found).sort_values(list(_ORDER), ascending=list(_ORDER.values())).head(limit)
    hits = hits.merge(_features_of(path, hits, "f.density, f.top_tokens"), on=["sae", "feature"])
    return hits[cols].reset_index(drop=True)


# ---- across layers: error propagation (engine.propagation) ----
_SPLICED = f"""JOIN saes s ON s.run_id = t.run_id AND s.sae = t.sae
              JOIN runs r ON r.run_id = t.run_id WHERE {COMPLETE}"""


@cached
def propagation(path: str) -> pd.DataFrame:
    """Residual change per (spliced SAE, measured hook), with the spliced SAE's hook, depth and
    family (`spliced_hook`, `spliced_depth`, `architecture`)."""
    return _df(
        path,
        f"""SELECT t.*, s.hook AS spliced_hook, s.depth AS spliced_depth, s.architecture,
                   TRY_CAST(json_extract(r.config, '$.splice_seqs') AS INTEGER) AS splice_seqs,
                   coalesce(TRY_CAST(json_extract(r.config, '$.splice_every') AS INTEGER), 1) AS splice_every
            FROM propagation t {_SPLICED} ORDER BY s.depth, t.sae, t.depth""",
    )


@cached
def propagation_recon(path: str) -> pd.DataFrame:
    """Each later SAE of the spliced SAE's family on the perturbed stream next to the clean one;
    `ev_drop` = clean EV - perturbed EV."""
    return _df(
        path,
        f"""SELECT t.*, t.ev_clean - t.ev_spliced AS ev_drop, s.hook AS spliced_hook, s.depth AS spliced_depth,
                   s.architecture
            FROM propagation_recon t {_SPLICED} ORDER BY s.depth, t.sae, t.depth""",
    )


@cached
def splice_output(path: str) -> pd.DataFrame:
    """The model's own loss with SAEs spliced in (alone, ablated, against random errors, or the
    family's compounding chain); `harm` is the loss increase over the clean model."""
    return _df(
        path,
        f"""SELECT t.*, s.hook AS spliced_hook, s.architecture, t.spliced - t.clean AS harm
            FROM splice_output t {_SPLICED} ORDER BY t.mode, t.family, t.depth, t.sae""",
    )


@cached
def loss_per_sae(path: str) -> pd.DataFrame:
    """One row per spliced SAE: the loss increase with its reconstruction and with random errors
    of the same norm, their ratio (how pathological its errors are), and loss recovered."""
    return _df(
        path,
        f"""SELECT t.sae, s.hook, s.depth, s.architecture, s.train_context, t.metric, t.clean,
                   t.spliced - t.clean AS increase, q.spliced - q.clean AS random_increase,
                   -- the ratio only where random errors raise the loss at all; a fall would flip its sign
                   CASE WHEN q.spliced > q.clean THEN (t.spliced - t.clean) / (q.spliced - q.clean) END AS ratio,
                   q.draws,
                   s.downstream_value AS recovered, s.downstream_ablated AS ablated, t.cosine
            FROM splice_output t
            LEFT JOIN splice_output q ON q.run_id = t.run_id AND q.sae = t.sae AND q.mode = 'random'
            {_SPLICED} AND t.mode = 'alone'
            ORDER BY s.architecture, s.depth, s.sae""",
    )


@cached
def splice_context(path: str) -> pd.DataFrame:
    """The loss increase from each SAE alone, by context (tokens seen, or text length), with the
    SAE's hook, family and training context."""
    return _df(
        path,
        f"""SELECT t.*, s.hook, s.architecture, s.train_context
            FROM splice_context t {_SPLICED} ORDER BY s.architecture, s.depth, t.sae, t.ctx_lo""",
    )


@cached
def steering_summary(path: str) -> pd.DataFrame:
    return _df(
        path,
        f"""SELECT t.*, s.hook, s.depth, s.architecture FROM steering_summary t JOIN saes s USING (sae)
           JOIN runs r USING (run_id) WHERE {COMPLETE} ORDER BY s.architecture, s.depth, t.sae""",
    )


@cached
def steering(path: str, sae: str) -> pd.DataFrame:
    """Every feature's steering estimate (and exact changes where measured) with its density."""
    return _df(
        path,
        """SELECT t.*, f.density, f.max_act FROM steering t JOIN features f USING (sae, feature)
           WHERE t.sae = ? ORDER BY t.feature""",
        [sae],
    )


def steering_feature(path: str, sae: str, f: int) -> dict | None:
    df = _df(path, "SELECT * FROM steering WHERE sae = ? AND feature = ?", [sae, f])
    return None if df.empty else df.iloc[0].to_dict()


def sequences_head(path: str, run_id: str, n: int) -> list[np.ndarray]:
    """The token ids of a run's first n sequences (a fixed corpus sample)."""
    df = _df(path, "SELECT tokens FROM sequences WHERE run_id = ? ORDER BY seq LIMIT ?", [run_id, n])
    return [np.asarray(t) for t in df["tokens"]]


@cached
def run_option(path: str, run_id: str, key: str):
    """One option of the run's recorded config (None where the run did not record it)."""
    df = _df(path, "SELECT json_extract(config, ?) AS v FROM runs WHERE run_id = ?", [f"$.{key}", run_id])
    if df.empty or df["v"].iloc[0] is None:
        return None
    return json.loads(df["v"].iloc[0])


@cached
def splice_sample(path: str, run_id: str) -> tuple[np.ndarray, list[int]]:
    """The run's splice sample (config.splice_members): token ids [n, T] and the sequence
    numbers; empty when the run had none."""
    size, every = run_option(path, run_id, "splice_seqs") or 0, run_option(path, run_id, "splice_every") or 1
    seqs = _df(path, "SELECT seq FROM sequences WHERE run_id = ? AND seq % ? < 2", [run_id, 2 * every])["seq"]
    want = seqs[splice_members(seqs.to_numpy(), size, every)].tolist()
    df = _df(
        path,
        "SELECT seq, tokens FROM sequences WHERE run_id = ? AND seq IN (SELECT unnest(?::INTEGER[])) ORDER BY seq",
        [run_id, want],
    )
    if df.empty:
        return np.zeros((0, 0), dtype=np.int64), []
    return np.stack([np.asarray(t) for t in df["tokens"]]), [int(q) for q in df["seq"]]


@cached
def diagnostics(path: str, sae: str) -> pd.DataFrame:
    """Every feature of an SAE (as `features` gives it) with the engine.clusters diagnostics."""
    diag = _df(
        path,
        """SELECT feature, map_x, map_y, tail_cos, pos_corr, anti_partner, anti_cos, pos_kl
           FROM feature_diagnostics WHERE sae = ? ORDER BY feature""",
        [sae],
    )
    return features(path, sae).drop(columns="mean_act").merge(diag, on="feature")


@cached
def position_profiles(path: str, sae: str, feats: tuple[int, ...]) -> pd.DataFrame:
    """Firings and activation sums per position bucket (`pos_fire`, `pos_act`) and `pos_kl` of
    these features (positions.py; buckets of sae_diagnostics.pos_width positions)."""
    return _df(
        path,
        """SELECT feature, pos_fire, pos_act, pos_kl FROM feature_diagnostics
           WHERE sae = ? AND feature IN (SELECT unnest(?::INTEGER[])) ORDER BY feature""",
        [sae, list(feats)],
    )


@cached
def sae_diagnostics(path: str, sae: str) -> SaeDiagnostics:
    df = _df(path, "SELECT * FROM sae_diagnostics WHERE sae = ?", [sae])
    if df.empty:
        raise UserError(f"{sae} has no density diagnostics (computed by precompute since layout 7)")
    return SaeDiagnostics.from_row(df.iloc[0].to_dict())


# ---- whole-SAE reads for export ----


def top_examples_all(path: str, sae: str, n: int) -> pd.DataFrame:
    """Every feature's n best top examples with their context token ids."""
    s = sae_row(path, sae)
    return _df(
        path,
        """SELECT e.feature, e.rank, e.acts,
                  list_slice(q.tokens, e.ctx_start + 1, e.ctx_start + len(e.acts)) AS token_ids
           FROM examples e JOIN sequences q ON q.run_id = ? AND q.seq = e.seq
           WHERE e.sae = ? AND e.kind = 0 AND e.rank < ? ORDER BY e.feature, e.rank""",
        [s.run_id, sae, n],
    )


def sae_table(path: str, table: str, sae: str, order: str) -> pd.DataFrame:
    """All rows of one SAE in a per-SAE table (token_effects, neighbours, features)."""
    if table not in schema.SAE_TABLES:
        raise UserError(f"no per-SAE table {table!r}")
    return _df(path, f"SELECT * FROM {table} WHERE sae = ? ORDER BY {order}", [sae])
