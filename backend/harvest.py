"""The precompute: one streaming pass over the corpus for all SAEs, then one write.

`precompute(cfg)` is the entry point behind `python -m backend precompute`; tests pass a model
adapter and loaded SAEs directly. With `--shard I/N` the pass saves its partial state instead
of writing the database, and `merge_shards` finishes several such states into one run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from backend import store
from backend.config import PrecomputeConfig, SAESource
from backend.corpus import documents, token_contexts
from backend.errors import UserError
from backend.models import Downstream, ModelAdapter, hook_layer, load_model
from backend.saes import LoadedSAE, expand_sources, load_saes
from backend.stats import FeatureStats, StatsSpec


def versions() -> dict:
    import duckdb
    import sae_lens
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sae_lens": sae_lens.__version__,
        "transformers": transformers.__version__,
        "duckdb": duckdb.__version__,
    }
    try:
        import transformer_lens

        out["transformer_lens"] = getattr(transformer_lens, "__version__", "unknown")
    except ImportError:
        pass
    return out


def n_special(adapter: ModelAdapter) -> int:
    tokens, _ = adapter.wrap(np.zeros((1, 1), dtype=np.int32))
    return tokens.shape[1] - 1


def _batches(cfg: PrecomputeConfig, adapter: ModelAdapter):
    """(seq_ids, content chunks) batches of this shard's sequences, at most n_tokens in all."""
    content_len = cfg.context_len - n_special(adapter)
    if content_len < 1:
        raise UserError(f"--context-len {cfg.context_len} leaves no room for text after special tokens")
    n_seqs = max(1, math.ceil(cfg.n_tokens / cfg.context_len))
    docs = documents(cfg.corpus, cfg.corpus_split, cfg.text_field)
    chunks = itertools.islice(token_contexts(docs, adapter.tokenizer, content_len), n_seqs)
    shard = cfg.shard_index() or (0, 1)
    ids, rows = [], []
    for seq, chunk in enumerate(chunks):
        if seq % shard[1] != shard[0]:
            continue
        ids.append(seq)
        rows.append(chunk)
        if len(rows) == cfg.batch_size:
            yield np.asarray(ids), np.stack(rows)
            ids, rows = [], []
    if rows:
        yield np.asarray(ids), np.stack(rows)


def _prefetch(items: Iterator, depth: int = 4) -> Iterator:
    """Yield from `items` while a background thread produces the next ones. Reading and
    tokenizing the corpus is Python work that fills the gaps the batch's single-threaded tensor
    operations leave on the other core (about 4% of a CPU run). Producer errors re-raise here."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(e)

    threading.Thread(target=produce, daemon=True, name="corpus-prefetch").start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def recon_rows(seq_ids: np.ndarray, cfg: PrecomputeConfig, device: torch.device) -> slice | torch.Tensor | None:
    """Rows of a batch whose reconstruction error is measured: the sequences of every
    `recon_every`-th run of `batch_size` consecutive ones. A function of the sequence number alone,
    so shards agree; in a one-process run that is every N-th batch, whole, with no copying."""
    chosen = (np.asarray(seq_ids) // cfg.batch_size) % cfg.recon_every == 0
    if chosen.all():
        return slice(None)
    if not chosen.any():
        return None
    return torch.as_tensor(np.flatnonzero(chosen), device=device)


class Harvest:
    """State of one pass: per-SAE statistics, downstream figures, the token file."""

    def __init__(self, cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE], token_file: str):
        self.cfg, self.adapter, self.saes = cfg, adapter, saes
        self.device = torch.device(cfg.device)
        self.stats = {s.name: FeatureStats(self.spec(s), self.device) for s in saes}
        self.downstream: dict[str, list[tuple[Downstream, int]]] = {s.name: [] for s in saes}
        self.hooks = sorted({s.hook for s in saes})
        self.n_seqs = 0
        self._downstream_left = cfg.downstream_seqs
        self.token_file = token_file
        self._writer: pq.ParquetWriter | None = None

    def spec(self, s: LoadedSAE) -> StatsSpec:
        c = self.cfg
        return StatsSpec(
            d_sae=s.sae.cfg.d_sae,
            d_in=s.sae.cfg.d_in,
            seq_len=c.context_len,
            n_top=c.n_top,
            n_buckets=c.n_buckets,
            per_bucket=c.per_bucket,
            left=c.left,
            right=c.right,
            seed=c.seed,
        )

    @torch.no_grad()
    def step(self, seq_ids: np.ndarray, content: np.ndarray) -> None:
        tokens, mask = self.adapter.wrap(content)
        if self.cfg.include_special:
            mask = torch.ones_like(mask)
        acts = self.adapter.activations(tokens, self.hooks)
        seq_t = torch.as_tensor(seq_ids, device=self.device)
        mask = mask.to(self.device)
        recon = recon_rows(seq_ids, self.cfg, self.device)
        for s in self.saes:
            x = acts[s.hook].to(s.sae.dtype)
            codes, chosen = s.encode(x)
            st = self.stats[s.name]
            if recon is not None:  # a slice(None) indexes as a view, with no copy
                rows = None if chosen is None else (chosen[0][recon], chosen[1][recon])
                st.update_recon(x[recon], s.decode(codes[recon], rows), mask[recon])
            st.update(codes, seq_t, mask, chosen)
        if self._downstream_left > 0:
            sub = tokens[: self._downstream_left]
            for s, d in zip(self.saes, self.adapter.downstream_all(sub, [(s.hook, s.sae) for s in self.saes])):
                self.downstream[s.name].append((d, len(sub)))
            self._downstream_left -= len(sub)
        self._write_tokens(seq_ids, tokens.cpu().numpy())
        self.n_seqs += len(seq_ids)

    def _write_tokens(self, seq_ids, tokens) -> None:
        table = pa.table(
            {
                "seq": pa.array(seq_ids, pa.int32()),
                "tokens": pa.array(list(tokens.astype(np.int32)), pa.list_(pa.int32())),
            }
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.token_file, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def run(self) -> None:
        total = max(1, math.ceil(self.cfg.n_tokens / self.cfg.context_len))
        if self.cfg.shard_index():
            i, n = self.cfg.shard_index()
            total = len(range(i, total, n))  # this shard's share of the sequences
        bar = tqdm(total=total * self.cfg.context_len, unit="tok", desc="harvest", unit_scale=True, file=sys.stderr)
        try:
            for seq_ids, content in _prefetch(_batches(self.cfg, self.adapter)):
                self.step(seq_ids, content)
                bar.update(len(seq_ids) * self.cfg.context_len)
        finally:
            bar.close()
            self.close()
        if self.n_seqs == 0:
            raise UserError(
                f"corpus {self.cfg.corpus!r} is too short: it gave no sequence of {self.cfg.context_len} tokens"
            )
        if self.n_seqs < total:
            print(
                f"note: corpus {self.cfg.corpus!r} ran out after {self.n_seqs * self.cfg.context_len:,} of the "
                f"{total * self.cfg.context_len:,} tokens asked for; the run uses what there is",
                file=sys.stderr,
            )

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "n_seqs": self.n_seqs,
            "stats": {k: v.state_dict() for k, v in self.stats.items()},
            "downstream": {k: [(asdict(d), n) for d, n in v] for k, v in self.downstream.items()},
        }

    def merge_state(self, d: dict) -> None:
        for name, sd in d["stats"].items():
            self.stats[name].merge(FeatureStats.from_state_dict(sd, self.device))
        for name, ds in d["downstream"].items():
            self.downstream[name] += [(Downstream(**x), n) for x, n in ds]
        self.n_seqs += d["n_seqs"]


# ---- turning statistics into tables ----


def _examples_table(name: str, st: FeatureStats) -> pa.Table:
    """Examples as Arrow, the context activations a list column built from one flat buffer
    (a pandas column of per-row arrays is what made this write slow)."""
    spec = st.spec
    ex = st.examples()
    order = np.lexsort((ex["rank"], ex["bucket"], ex["kind"], ex["feature"]))
    ex = {k: v[order] for k, v in ex.items()}
    seq = ex["token"] // spec.seq_len
    pos = ex["token"] % spec.seq_len
    start = np.maximum(pos - spec.left, 0)
    stop = np.minimum(pos + spec.right + 1, spec.seq_len)
    # Window column j holds position pos - left + j; keep the columns inside the sequence.
    lo = start - (pos - spec.left)
    j = np.arange(spec.window)
    inside = (j >= lo[:, None]) & (j < (lo + stop - start)[:, None])
    offsets = np.concatenate([[0], np.cumsum(stop - start)]).astype(np.int32)
    acts = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ex["win"][inside].astype(np.float32)))
    n = len(seq)
    return pa.table(
        {
            "sae": pa.array([name] * n, pa.string()),
            "feature": ex["feature"].astype(np.int32),
            "kind": ex["kind"].astype(np.int8),
            "rank": ex["rank"].astype(np.int16),
            "bucket": ex["bucket"].astype(np.int8),
            "seq": seq.astype(np.int32),
            "pos": pos.astype(np.int16),
            "ctx_start": start.astype(np.int16),
            "value": ex["value"].astype(np.float32),
            "acts": acts,
        }
    )


@torch.no_grad()
def _token_effects(name: str, sae, matrix: torch.Tensor, k: int, chunk: int = 1024) -> pd.DataFrame:
    W = sae.W_dec.detach().float()
    M = matrix.to(W.device).float()
    k = min(k, M.shape[1])
    frames = []
    for lo in range(0, W.shape[0], chunk):
        logits = W[lo : lo + chunk] @ M
        for direction, largest in ((1, True), (-1, False)):
            v, i = torch.topk(logits, k, dim=1, largest=largest)
            f = np.repeat(np.arange(lo, lo + v.shape[0]), k)
            frames.append(
                pd.DataFrame(
                    {
                        "sae": name,
                        "feature": f.astype(np.int32),
                        "direction": np.int8(direction),
                        "rank": np.tile(np.arange(k), v.shape[0]).astype(np.int16),
                        "token_id": i.cpu().numpy().ravel().astype(np.int32),
                        "value": v.cpu().numpy().ravel().astype(np.float32),
                    }
                )
            )
    return pd.concat(frames).sort_values(["feature", "direction", "rank"], kind="stable")


@torch.no_grad()
def _neighbours(name: str, sae, k: int, chunk: int = 2048) -> pd.DataFrame:
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    k = min(k, W.shape[0] - 1)
    frames = []
    for lo in range(0, W.shape[0], chunk):
        cos = W[lo : lo + chunk] @ W.T
        rows = torch.arange(cos.shape[0], device=W.device)
        cos[rows, rows + lo] = -2.0  # never one's own neighbour
        v, i = torch.topk(cos, k, dim=1)
        frames.append(
            pd.DataFrame(
                {
                    "sae": name,
                    "feature": np.repeat(np.arange(lo, lo + cos.shape[0]), k).astype(np.int32),
                    "rank": np.tile(np.arange(k), cos.shape[0]).astype(np.int16),
                    "other": i.cpu().numpy().ravel().astype(np.int32),
                    "cosine": v.cpu().numpy().ravel().astype(np.float32),
                }
            )
        )
    return pd.concat(frames)


def density_histogram(name: str, density: np.ndarray, width: float = 0.1) -> pd.DataFrame:
    live = density[density > 0]
    if live.size == 0:
        return pd.DataFrame(columns=["sae", "bin_lo", "bin_hi", "n"])
    logd = np.log10(live)
    lo = math.floor(logd.min() / width) * width
    edges = np.arange(lo, width / 2 + 1e-9, width)
    edges = np.append(edges, edges[-1] + width) if edges[-1] < 0 else edges
    counts, edges = np.histogram(logd, bins=edges)
    return pd.DataFrame({"sae": name, "bin_lo": edges[:-1], "bin_hi": edges[1:], "n": counts.astype(np.int32)})


def _weighted_mean(ds: list[tuple[Downstream, int]], attr: str) -> float | None:
    """Mean over the downstream samples, weighted by their number of sequences."""
    if not ds:
        return None
    return float(np.average([getattr(d, attr) for d, _ in ds], weights=[n for _, n in ds]))


def finalize(h: Harvest, token_files: list[str]) -> str:
    """Write a finished harvest as one complete run; returns the run id."""
    cfg, adapter = h.cfg, h.adapter
    run_id = cfg.run_id()
    names = store.unique_sae_names(cfg.db, run_id, [s.name for s in h.saes])
    effect_kind, matrix = adapter.token_effect_matrix()
    sae_rows, tables = [], {t: [] for t in store.SAE_TABLES}
    for s, name in tqdm(list(zip(h.saes, names)), desc="finalize", unit="sae", file=sys.stderr):
        st = h.stats[s.name]
        m = st.layer_metrics()
        ds = h.downstream[s.name]
        mean = {attr: _weighted_mean(ds, attr) for attr in ("value", "clean", "spliced", "ablated")}
        cfg_dict = s.sae.cfg.to_dict() if hasattr(s.sae.cfg, "to_dict") else {}
        sae_rows.append(
            {
                "run_id": run_id,
                "sae": name,
                "hook": s.hook,
                "layer": hook_layer(s.hook),
                "source": s.source,
                "architecture": s.sae.cfg.architecture(),
                "d_in": s.sae.cfg.d_in,
                "d_sae": s.sae.cfg.d_sae,
                "sae_config": json.dumps(cfg_dict, default=str),
                **m,
                "downstream_metric": ds[0][0].name if ds else None,
                "downstream_value": mean["value"],
                "downstream_clean": mean["clean"],
                "downstream_spliced": mean["spliced"],
                "downstream_ablated": mean["ablated"],
                "effect_kind": effect_kind,
                "hist_lo": st.spec.hist_lo,
                "hist_hi": st.spec.hist_hi,
                "context_left": st.spec.left,
                "context_right": st.spec.right,
            }
        )
        ft = st.feature_table()
        tables["features"].append(
            pd.DataFrame(
                {
                    "sae": name,
                    "feature": ft["feature"],
                    "count": ft["count"],
                    "density": ft["density"],
                    "mean_act": ft["mean_act"],
                    "max_act": ft["max_act"],
                    "hist": list(ft["hist"].astype(np.int32)),
                }
            )
        )
        tables["examples"].append(_examples_table(name, st))
        tables["token_effects"].append(_token_effects(name, s.sae, matrix, cfg.n_effects))
        tables["neighbours"].append(_neighbours(name, s.sae, cfg.n_neighbours))
        n = st.pos_n.cpu().numpy()
        keep = n > 0
        tables["position_error"].append(
            pd.DataFrame(
                {
                    "sae": name,
                    "pos": np.nonzero(keep)[0].astype(np.int32),
                    "n": n[keep],
                    "mse": st.pos_sse.cpu().numpy()[keep] / n[keep],
                    "rel_error": st.pos_sse.cpu().numpy()[keep] / np.maximum(st.pos_x2.cpu().numpy()[keep], 1e-30),
                }
            )
        )
        tables["density_hist"].append(density_histogram(name, ft["density"]))
    frames = {t: pd.concat(v, ignore_index=True) for t, v in tables.items() if v and t != "examples"}
    frames["examples"] = pa.concat_tables(tables["examples"])
    strings = adapter.token_strings()
    frames["vocab"] = pd.DataFrame(
        {"run_id": run_id, "token_id": np.arange(len(strings), dtype=np.int32), "token": strings}
    )
    n_tokens = h.stats[h.saes[0].name].n_tokens
    token_glob = token_files[0] if len(token_files) == 1 else token_files
    store.finish_run(
        cfg.db, run_id, {"n_tokens": n_tokens, "n_seqs": h.n_seqs}, pd.DataFrame(sae_rows), frames, token_glob
    )
    return run_id


def _meta(cfg: PrecomputeConfig, adapter: ModelAdapter) -> dict:
    return {
        "model": adapter.name,
        "model_kind": adapter.kind,
        "corpus": cfg.corpus,
        "context_len": cfg.context_len,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "config": asdict(cfg),
        "versions": versions(),
    }


def precompute(cfg: PrecomputeConfig, adapter: ModelAdapter | None = None, saes: list[LoadedSAE] | None = None) -> str:
    """Run the whole precompute; returns the run id (or the shard state's path with --shard)."""
    if not cfg.saes and saes is None:
        raise UserError("no SAE given: pass --sae FOLDER or --release R --sae-id ID")
    if saes is None:
        expand_sources(cfg.saes)  # unknown releases / ids / folders fail before the model loads
    adapter = adapter or load_model(cfg.model, cfg.device, cfg.dtype)
    saes = saes if saes is not None else load_saes(cfg.saes, adapter, cfg.device, cfg.dtype)
    run_id = cfg.run_id()
    db = Path(cfg.db)
    if cfg.shard_index():
        i, n = cfg.shard_index()
        out = db.with_name(f"{db.stem}.{run_id}.shard-{i}-of-{n}")
        out.mkdir(parents=True, exist_ok=True)
        h = Harvest(cfg, adapter, saes, str(out / "tokens.parquet"))
        h.run()
        torch.save(h.state_dict(), out / "state.pt")
        return str(out)
    token_file = str(db.with_name(f".{db.name}.{run_id}.tokens.parquet"))
    try:
        with store.running(cfg.db, run_id, _meta(cfg, adapter), force=cfg.force):
            h = Harvest(cfg, adapter, saes, token_file)
            h.run()
            finalize(h, [token_file])
    finally:
        if os.path.exists(token_file):
            os.remove(token_file)
    return run_id


def merge_shards(shard_dirs: list[str], db: str | None = None, force: bool = False) -> str:
    """Combine `--shard` outputs of one configuration into a complete run in the database."""
    if not shard_dirs:
        raise UserError("no shard folders given")
    states = []
    for d in shard_dirs:
        p = Path(d) / "state.pt"
        if not p.exists():
            raise UserError(f"{d} is not a finished shard (no state.pt)")
        states.append(torch.load(p, weights_only=False))
    base = {k: v for k, v in states[0]["config"].items() if k != "shard"}
    for s in states[1:]:
        if {k: v for k, v in s["config"].items() if k != "shard"} != base:
            raise UserError("shards were computed with different options; they cannot be merged")
    shards = sorted(s["config"]["shard"] for s in states)
    n = int(shards[0].split("/")[1])
    if shards != sorted(f"{i}/{n}" for i in range(n)):
        raise UserError(f"need exactly one of each shard 0/{n} .. {n - 1}/{n}, got {shards}")
    base["saes"] = [SAESource(**s) for s in base["saes"]]
    cfg = PrecomputeConfig(**{**base, "shard": None, "force": force, **({"db": db} if db else {})})
    adapter = load_model(cfg.model, cfg.device, cfg.dtype)
    saes = load_saes(cfg.saes, adapter, cfg.device, cfg.dtype)
    return merge_states(cfg, adapter, saes, states, [str(Path(d) / "tokens.parquet") for d in shard_dirs])


def merge_states(
    cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE], states: list[dict], token_files: list[str]
) -> str:
    run_id = cfg.run_id()
    with store.running(cfg.db, run_id, _meta(cfg, adapter), force=cfg.force):
        h = Harvest(cfg, adapter, saes, token_file="")
        for s in states:
            h.merge_state(s)
        finalize(h, token_files)
    return run_id
