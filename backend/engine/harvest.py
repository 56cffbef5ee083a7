"""The streaming pass: corpus batches -> model activations -> SAE codes -> mergeable statistics.

`Harvest.run` reads this shard's sequences once for all SAEs; `state_dict` / `merge_state` carry
the partial state between shards. Turning the state into tables is `tables`, writing it is
`pipeline`.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from backend.config import PrecomputeConfig
from backend.engine.corpus import documents, token_contexts
from backend.engine.models import ModelAdapter
from backend.engine.propagation import Propagation
from backend.engine.saes import LoadedSAE
from backend.engine.stats import FeatureStats, StatsSpec
from backend.errors import UserError

log = logging.getLogger(__name__)


def special_mask(tokenizer) -> torch.Tensor:
    """True at the ids of the tokenizer's special tokens (BOS/EOS/CLS/SEP/PAD ...): positions
    holding them are not counted in any statistic, wherever they sit in a sequence."""
    ids = [i for i in tokenizer.all_special_ids if i is not None]
    out = torch.zeros(max(len(tokenizer), max(ids, default=0) + 1), dtype=torch.bool)
    out[ids] = True
    return out


def n_special(adapter: ModelAdapter) -> int:
    tokens, _ = adapter.wrap(np.zeros((1, 1), dtype=np.int32))
    return tokens.shape[1] - 1


def _batches(cfg: PrecomputeConfig, adapter: ModelAdapter):
    """(seq_ids, content chunks) batches of this shard's sequences, at most n_tokens in all
    (n_tokens 0: the whole corpus)."""
    content_len = cfg.context_len - n_special(adapter)
    if content_len < 1:
        raise UserError(f"--context-len {cfg.context_len} leaves no room for text after special tokens")
    docs = documents(cfg.corpus, cfg.corpus_split, cfg.text_field)
    chunks = token_contexts(docs, adapter.tokenizer, content_len)
    if cfg.n_tokens:
        chunks = itertools.islice(chunks, max(1, math.ceil(cfg.n_tokens / cfg.context_len)))
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
    """State of one pass: per-SAE statistics, the splice sample's sums, the token file."""

    def __init__(self, cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE], token_file: str):
        self.cfg, self.adapter, self.saes = cfg, adapter, saes
        self.device = torch.device(cfg.device)
        self.stats = {s.name: FeatureStats(self.spec(s), self.device) for s in saes}
        self.hooks = sorted({s.hook for s in saes})
        self.propagation = Propagation(adapter, saes, self.device, cfg.context_len, cfg.random_draws, cfg.seed)
        self.n_seqs = 0
        self.token_file = token_file
        self._writer: pq.ParquetWriter | None = None
        self._special = special_mask(adapter.tokenizer).to(self.device)
        self.progress: Callable[[int], None] | None = None
        """tokens done, reported after each batch instead of this process's own bar (Ray workers)"""

    def spec(self, s: LoadedSAE) -> StatsSpec:
        return StatsSpec.for_run(self.cfg, s.sae.cfg.d_sae, s.sae.cfg.d_in)

    @torch.no_grad()
    def step(self, seq_ids: np.ndarray, content: np.ndarray) -> None:
        tokens, mask = self.adapter.wrap(content)
        if self.cfg.include_special:
            mask = torch.ones_like(mask)
        else:  # separators the corpus reader put between documents, and any other special token
            mask = mask & ~self._special[tokens.to(self._special.device)].to(mask.device)
        acts = self.adapter.activations(tokens, self.hooks)
        seq_t = torch.as_tensor(seq_ids, device=self.device)
        mask = mask.to(self.device)
        for s in self.saes:
            x = acts[s.hook].to(s.sae.dtype)
            per = max(1, self.ENCODE_BYTES // (x.shape[1] * s.sae.cfg.d_sae * x.element_size()))
            for lo in range(0, len(seq_ids), per):
                rows = slice(lo, lo + per)  # the whole batch at once unless the SAE is wide
                self._encode(s, x[rows], seq_ids[rows], seq_t[rows], mask[rows])
        sample = np.flatnonzero(self.cfg.in_splice_sample(seq_ids))
        if sample.size:  # a global rule, so one pass and any set of shards splice the same sequences
            rows = torch.as_tensor(sample, device=tokens.device)
            self.propagation.update(
                tokens[rows], {h: a[rows] for h, a in acts.items()}, mask[rows.to(mask.device)], seq_ids[sample]
            )
        self._write_tokens(seq_ids, tokens.cpu().numpy())
        self.n_seqs += len(seq_ids)

    ENCODE_BYTES = 128 * 2**20
    """dense codes of one SAE held at once: a wide SAE encodes a batch a few sequences at a time
    (at 24,576 features a batch of 32 x 128 tokens is 400 MB of codes, and as much again while
    the encoder makes them)"""

    def _encode(self, s: LoadedSAE, x: torch.Tensor, seq_ids: np.ndarray, seq_t: torch.Tensor, mask) -> None:
        st = self.stats[s.name]
        # (update zeroes the codes of masked tokens, which update_recon leaves out anyway)
        if s.floor is not None:  # ReLU / JumpReLU: nonzeros straight from the pre-activations
            pre, chosen = s.pre_activations(x), None
            nz = st.update(pre, seq_t, mask, floor=s.floor)
        else:
            codes, chosen = s.encode(x)
            nz = st.update(codes, seq_t, mask, chosen)
        recon = recon_rows(seq_ids, self.cfg, self.device)
        if recon is not None:  # a slice(None) indexes as a view, with no copy
            if chosen is None and s.sparse_decode and isinstance(recon, slice):
                x_hat = s.decode_nonzeros(nz.row, nz.feature, nz.value, x.shape[:-1])
            else:
                part = codes[recon] if s.floor is None else s.codes_from(pre[recon])
                x_hat = s.decode(part, None if chosen is None else (chosen[0][recon], chosen[1][recon]))
            st.update_recon(x[recon], x_hat, mask[recon])

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
        total = max(1, math.ceil(self.cfg.n_tokens / self.cfg.context_len)) if self.cfg.n_tokens else None
        if total and self.cfg.shard_index():
            i, n = self.cfg.shard_index()
            total = len(range(i, total, n))  # this shard's share of the sequences
        bar = tqdm(
            total=total * self.cfg.context_len if total else None,
            unit="tok",
            desc="harvest",
            unit_scale=True,
            file=sys.stderr,
            disable=self.progress is not None,
        )
        try:
            for seq_ids, content in _prefetch(_batches(self.cfg, self.adapter)):
                self.step(seq_ids, content)
                n = len(seq_ids) * self.cfg.context_len
                bar.update(n)
                if self.progress is not None:
                    self.progress(n)
            self.propagation.flush()
        finally:
            bar.close()
            self.close()
        if self.n_seqs == 0:
            raise UserError(
                f"corpus {self.cfg.corpus!r} is too short: it gave no sequence of {self.cfg.context_len} tokens"
            )
        if total and self.n_seqs < total:
            log.warning(
                "corpus %r ran out after %s of the %s tokens asked for; the run uses what there is",
                self.cfg.corpus,
                f"{self.n_seqs * self.cfg.context_len:,}",
                f"{total * self.cfg.context_len:,}",
            )

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "n_seqs": self.n_seqs,
            "stats": {k: v.state_dict() for k, v in self.stats.items()},
            "propagation": self.propagation.state_dict(),
        }

    def merge_state(self, d: dict) -> None:
        for name, sd in d["stats"].items():
            self.stats[name].merge(FeatureStats.from_state_dict(sd, self.device))
        self.propagation.merge_state(d["propagation"])
        self.n_seqs += d["n_seqs"]
