"""The steps every kind of run ends with, whoever ran the pass: turn a finished (or merged)
harvest into tables and write it as one complete run. A single-process precompute
(`pipeline`), `merge-shards` and the Ray driver (`distributed`) all finish through here, so a run
is registered, finalized and cleaned up one way.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from backend.config import PrecomputeConfig
from backend.engine import steering, tables, weights
from backend.engine.harvest import Harvest, special_mask
from backend.engine.models import ModelAdapter
from backend.engine.saes import LoadedSAE
from backend.errors import UserError
from backend.store import datafolder, writes


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


def finalize(h: Harvest, token_files: list[str], run_id: str | None = None, group: int = 0) -> str:
    """Write a finished harvest as one complete run; returns the run id. Each SAE's tables are
    spooled as soon as they are made and its statistics let go of, so the final step holds one
    SAE's rows at a time (RunWriter). `run_id` and `group` (> 0): add the harvest's SAEs to that
    complete run as its group-th group (--append)."""
    cfg, adapter = h.cfg, h.adapter
    append = group > 0
    run_id = run_id or cfg.run_id()
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
        spec = steering.SteerSpec(
            extremes=cfg.steer_extremes, sample=cfg.steer_sample, length=cfg.steer_len, seed=cfg.seed
        )
        sweep = steering.Sweep(adapter, h.saes, h.propagation.tokens, spec)
    rows = []
    with writes.RunWriter(cfg.db, run_id) as w:
        for s, name in tqdm(list(zip(h.saes, names)), desc="finalize", unit="sae", file=sys.stderr):
            st = h.stats[s.name]
            context = tables.train_context(s, cfg.sae_context)
            ds = h.propagation.downstream(s.name)
            rows.append(tables.sae_row(run_id, name, s, st, ds, effect_kind, context, group))
            feats = tables.features_frame(name, st)
            density = feats["density"].to_numpy()
            diag, summary = tables.diagnostics_frames(name, s, st, density, cfg.tail_below, cfg.seed, cfg.feature_map)
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
            append=append,
        )
    return run_id


def run_meta(cfg: PrecomputeConfig, adapter: ModelAdapter) -> dict:
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


class new_file_removed_on_failure:
    """A database file this run created is removed again if the run fails before anything in it
    completed: a failed first precompute should not leave a file that lists only a failed run,
    nor the empty or cut-short file a full disk leaves (which would block the rerun). An
    interrupt (Ctrl-C) keeps a readable file, with the run marked interrupted, as the README says."""

    def __init__(self, db: Path):
        self.db, self.created = db, not db.exists()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None or not self.created or not self.db.exists():
            return False
        if datafolder.file_problem(self.db) is not None:
            keep = False  # not even a DuckDB file yet (a full disk): nothing in it to keep
        elif not issubclass(exc_type, Exception):
            return False
        else:
            try:
                keep = writes.has_complete_run(self.db)
            except UserError:
                keep = True  # someone else has it open: leave it alone
        if not keep:
            for p in (self.db, Path(str(self.db) + ".wal")):
                p.unlink(missing_ok=True)
        return False


def merge_states(
    cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE], states: list[dict], token_files: list[str]
) -> str:
    """Register the run, merge the shards' states and write them as one complete run."""
    with writes.running(cfg.db, cfg.run_id(), run_meta(cfg, adapter), force=cfg.force):
        return finish_states(cfg, adapter, saes, states, token_files)


def finish_states(
    cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE], states: list[dict], token_files: list[str]
) -> str:
    """Merge the shards' states into one harvest and finalize it, inside a run already registered."""
    h = Harvest(cfg, adapter, saes, token_file="")
    for s in states:
        h.merge_state(s)
    return finalize(h, token_files)
