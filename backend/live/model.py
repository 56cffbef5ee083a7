"""Loading the run's model and SAEs again from what its database recorded, and using them safely.

A server process holds one `Live` per database run (the app caches it); requests take its lock,
so concurrent sessions queue instead of racing on the model, and wait at most `wait_s`.
Where a source cannot be loaded here (a hub model without network, a moved SAE folder) the
error says what is missing and which environment variable points at a replacement.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from backend.config import SAESource
from backend.engine.harvest import n_special, special_mask
from backend.engine.models import ModelAdapter, load_model
from backend.engine.saes import LoadedSAE, load_saes
from backend.errors import UserError
from backend.store.datafolder import connect_read

MODEL_ENV = "SAE_DASHBOARD_MODEL"
"""a model to load instead of the one the run recorded (a local folder, or a name this machine can load)"""
SAE_DIR_ENV = "SAE_DASHBOARD_SAE_DIR"
"""a folder holding the run's SAE folders (by their folder names), when the recorded paths do not exist here"""
DEVICE_ENV = "SAE_DASHBOARD_DEVICE"
"""device for the live model; default: cuda where torch sees one, else cpu"""


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    """longest text a probe or a steering prompt may be, in tokens"""
    wait_s: float = 30.0
    """how long a request waits for the model while other sessions use it"""
    cache: int = 16
    """probes kept per process, so shading another feature of the same text costs nothing"""


class Live:
    """A model adapter and SAEs (by their names in the database) behind one lock."""

    def __init__(self, adapter: ModelAdapter, saes: dict[str, LoadedSAE], limits: Limits = Limits()):
        self.adapter, self.saes, self.limits = adapter, saes, limits
        self._lock = threading.Lock()
        self._special = special_mask(adapter.tokenizer).numpy()
        self._cache: OrderedDict = OrderedDict()
        self._strings: list[str] | None = None

    @contextmanager
    def using(self):
        if not self._lock.acquire(timeout=self.limits.wait_s):
            raise UserError(
                f"the model is busy with other sessions' requests (waited {self.limits.wait_s:.0f} s); try again"
            )
        try:
            with torch.no_grad():
                yield self.adapter
        finally:
            self._lock.release()

    def cached(self, key, compute):
        """compute() once per key (a small LRU): a rerun of the page reuses the last probes."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = compute()
        self._cache[key] = value
        while len(self._cache) > self.limits.cache:
            self._cache.popitem(last=False)
        return value

    def sae(self, name: str) -> LoadedSAE:
        if name not in self.saes:
            raise UserError(f"no live SAE {name!r} (this run has {', '.join(self.saes)})")
        return self.saes[name]

    def token_strings(self) -> list[str]:
        if self._strings is None:
            self._strings = self.adapter.token_strings()
        return self._strings

    def tokenize(self, text: str) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """Text -> tokens [1, T] with the model's special tokens, which positions count (not
        special), and each token's display text. Empty or over-long text is a message."""
        if not text or not text.strip():
            raise UserError("type some text first")
        ids = self.adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("the text has no tokens")
        limit = self.limits.max_tokens - n_special(self.adapter)
        if len(ids) > limit:
            raise UserError(f"the text is {len(ids):,} tokens long; the limit is {limit:,} (plus special tokens)")
        tokens, _ = self.adapter.wrap(np.asarray([ids], dtype=np.int64))
        flat = tokens[0].cpu().numpy()
        counted = ~self._special[np.minimum(flat, len(self._special) - 1)]
        strings = self.token_strings()
        return tokens, counted, [strings[i] if i < len(strings) else f"<{i}>" for i in flat]


def _run_record(db: str, run_id: str) -> tuple[dict, list[tuple[str, str]]]:
    try:
        con = connect_read(db)
    except duckdb.Error as e:
        first = str(e).splitlines()[0].replace(str(db), Path(db).name)
        raise UserError(f"cannot open {Path(db).name}: {first}") from None
    try:
        row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
        saes = con.execute("SELECT sae, source FROM saes WHERE run_id = ? ORDER BY depth, sae", [run_id]).fetchall()
    finally:
        con.close()
    if row is None:
        raise UserError(f"no run {run_id!r} in {Path(db).name}")
    return json.loads(row[0]), saes


def _source(recorded: str, config: dict) -> SAESource:
    """The SAE behind a recorded `source` ("release/sae_id" or a folder), found again here."""
    for s in config.get("saes", []):
        rel = s.get("release")
        if rel and recorded.startswith(rel + "/"):
            return SAESource(release=rel, sae_id=recorded[len(rel) + 1 :])
    if Path(recorded, "cfg.json").exists():
        return SAESource(path=recorded)
    elsewhere = os.environ.get(SAE_DIR_ENV)
    if elsewhere and Path(elsewhere, Path(recorded).name, "cfg.json").exists():
        return SAESource(path=str(Path(elsewhere, Path(recorded).name)))
    where = f" (not in {SAE_DIR_ENV}={elsewhere} either)" if elsewhere else ""
    raise UserError(
        f"the SAE folder {recorded} this run was computed with does not exist on this server{where}: set "
        f"{SAE_DIR_ENV} to the folder that holds {Path(recorded).name}/, and restart the dashboard"
    )


def load_live(db: str, run_id: str, limits: Limits = Limits()) -> Live:
    """The run's model and SAEs, loaded as the precompute loaded them (on this server's device)."""
    config, rows = _run_record(db, run_id)
    device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        # all cores but one: a probe must not starve the pages other sessions are reading
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    model = os.environ.get(MODEL_ENV) or config.get("model", "embedded")
    sources = [_source(src, config) for _, src in rows]
    try:
        adapter = load_model(model, device, config.get("dtype", "float32"))
    except UserError as e:
        raise UserError(
            f"{e}. The live model is needed for probing and steering only: set {MODEL_ENV} to a copy this server can "
            f"load (a local folder, or a name), and restart the dashboard"
        ) from None
    try:
        loaded = load_saes(sources, adapter, device, config.get("dtype", "float32"))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged SAE folder is a message, never a traceback on a page
        raise UserError(f"the run's SAEs cannot be loaded: {type(e).__name__}: {str(e).strip()[:300]}") from None
    return Live(adapter, {name: s for (name, _), s in zip(rows, loaded)}, limits)
