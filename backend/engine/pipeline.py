"""The precompute from end to end: load, run the pass, turn statistics into tables, write one
complete run. `precompute(cfg)` is the entry point behind `python -m backend precompute`; tests
pass a model adapter and loaded SAEs directly. With `--shard I/N` the pass saves its partial
state instead, and `merge_shards` finishes several such states into one run.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from backend.config import PrecomputeConfig, SAESource
from backend.engine import steering, tables, weights
from backend.engine.harvest import Harvest, special_mask
from backend.engine.models import ModelAdapter, load_model
from backend.engine.saes import LoadedSAE, expand_sources, load_saes
from backend.errors import UserError
from backend.store import writes


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


def finalize(h: Harvest, token_files: list[str]) -> str:
    """Write a finished harvest as one complete run; returns the run id. Each SAE's tables are
    spooled as soon as they are made and its statistics let go of, so the final step holds one
    SAE's rows at a time (RunWriter)."""
    cfg, adapter = h.cfg, h.adapter
    run_id = cfg.run_id()
    names = writes.unique_sae_names(cfg.db, run_id, [s.name for s in h.saes])
    effect_kind, matrix = adapter.token_effect_matrix()
    strings = adapter.token_strings()
    special = special_mask(adapter.tokenizer).numpy()
    vocab = pd.DataFrame(
        {
            "run_id": run_id,
            "token_id": np.arange(len(strings), dtype=np.int32),
            "token": strings,
            "special": special[: len(strings)],  # the mask spans at least the tokenizer's len
        }
    )
    n_tokens = h.stats[h.saes[0].name].n_tokens
    sweep = None
    if not cfg.no_steering and h.propagation.tokens:
        spec = steering.SteerSpec(extremes=cfg.steer_extremes, sample=cfg.steer_sample, seed=cfg.seed)
        sweep = steering.Sweep(adapter, h.saes, h.propagation.tokens, spec)
    rows = []
    with writes.RunWriter(cfg.db, run_id) as w:
        for s, name in tqdm(list(zip(h.saes, names)), desc="finalize", unit="sae", file=sys.stderr):
            st = h.stats[s.name]
            context = tables.train_context(s, cfg.sae_context)
            rows.append(tables.sae_row(run_id, name, s, st, h.propagation.downstream(s.name), effect_kind, context))
            feats = tables.features_frame(name, st)
            density = feats["density"].to_numpy()
            diag, summary = tables.diagnostics_frames(name, s, st, density, cfg.tail_below, cfg.seed)
            steer = steer_summary = None
            if sweep is not None:
                steer = sweep.table(name, s, feats["max_act"].to_numpy(), density)
                steer_summary = pd.DataFrame([sweep.summary(name, steer)])
            w.sae(
                name,
                {
                    "examples": tables.examples_table(name, st),
                    "features": feats,
                    "position_error": tables.position_error_frame(name, st),
                    "density_hist": tables.density_hist_frame(name, density),
                    "feature_diagnostics": diag,
                    "sae_diagnostics": summary,
                    "steering": steer,
                    "steering_summary": steer_summary,
                },
            )
            del st, feats, diag
            h.stats[s.name] = None  # its example windows are most of the pass's memory
            w.sae(
                name,
                {
                    "token_effects": weights.token_effects(name, s.sae, matrix, cfg.n_effects),
                    "neighbours": weights.neighbours(name, s.sae, cfg.n_neighbours),
                },
            )
        props = h.propagation.frames(run_id, {s.name: name for s, name in zip(h.saes, names)})
        w.finish(
            {"n_tokens": n_tokens, "n_seqs": h.n_seqs},
            pd.DataFrame([asdict(r) for r in rows]),
            {**props, "vocab": vocab},
            token_files[0] if len(token_files) == 1 else token_files,
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
    if cfg.workers:
        if adapter is not None or saes is not None:
            raise UserError("--workers loads the model and SAEs in each Ray worker: pass them by name, not as objects")
        from backend.engine.distributed import precompute_ray

        return precompute_ray(cfg)
    if saes is None:
        expand_sources(cfg.saes)  # unknown releases / ids / folders fail before the model loads
    if not cfg.shard:
        writes.check_path(cfg.db)
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
    with _new_file_removed_on_failure(db):
        try:
            with writes.running(cfg.db, run_id, _meta(cfg, adapter), force=cfg.force):
                h = Harvest(cfg, adapter, saes, token_file)
                h.run()
                finalize(h, [token_file])
        finally:
            if os.path.exists(token_file):
                os.remove(token_file)
    return run_id


class _new_file_removed_on_failure:
    """A database file this run created is removed again if the run fails before anything in it
    completed: a failed first precompute should not leave a file that lists only a failed run.
    An interrupt (Ctrl-C) keeps the file, with the run marked interrupted, as the README says."""

    def __init__(self, db: Path):
        self.db, self.created = db, not db.exists()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not issubclass(exc_type, Exception) or not self.created or not self.db.exists():
            return False
        try:
            keep = writes.has_complete_run(self.db)
        except UserError:
            keep = True  # someone else has it open: leave it alone
        if not keep:
            for p in (self.db, Path(str(self.db) + ".wal")):
                p.unlink(missing_ok=True)
        return False


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
    with writes.running(cfg.db, run_id, _meta(cfg, adapter), force=cfg.force):
        h = Harvest(cfg, adapter, saes, token_file="")
        for s in states:
            h.merge_state(s)
        finalize(h, token_files)
    return run_id
