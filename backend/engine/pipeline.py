"""The precompute from end to end: load, run the pass, turn statistics into tables, write one
complete run. `precompute(cfg)` is the entry point behind `python -m backend precompute`; tests
pass a model adapter and loaded SAEs directly. With `--shard I/N` the pass saves its partial
state instead, and `merge_shards` finishes several such states into one run.
"""

from __future__ import annotations

import os
from pathlib import Path

from backend.config import PrecomputeConfig
from backend.engine import state_file
from backend.engine.finish import finalize, merge_states, new_file_removed_on_failure, run_meta
from backend.engine.harvest import Harvest
from backend.engine.models import ModelAdapter, load_model
from backend.engine.saes import LoadedSAE, expand_sources, load_saes
from backend.errors import UserError
from backend.store import writes


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
    if cfg.append:  # no run to join fails before the model loads; names are checked once the SAEs have theirs
        writes.append_target(cfg.db, cfg.run_key(), cfg.run_name, [])
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
        state_file.save(h.state_dict(), out / "state.pt")
        return str(out)
    token_file = str(db.with_name(f".{db.name}.{run_id}.tokens.parquet"))
    if cfg.append:
        return _append(cfg, adapter, saes)
    with new_file_removed_on_failure(db):
        try:
            with writes.running(cfg.db, run_id, run_meta(cfg, adapter), force=cfg.force):
                h = Harvest(cfg, adapter, saes, token_file)
                h.run()
                finalize(h, [token_file])
        finally:
            if os.path.exists(token_file):
                os.remove(token_file)
    return run_id


def _append(cfg: PrecomputeConfig, adapter: ModelAdapter, saes: list[LoadedSAE]) -> str:
    """Add a group of SAEs to a complete run (--append). The run stays complete and readable
    throughout; the group's rows arrive in one transaction at the end, or not at all."""
    run_id, group = writes.append_target(cfg.db, cfg.run_key(), cfg.run_name, [s.name for s in saes])
    db = Path(cfg.db)
    token_file = str(db.with_name(f".{db.name}.{run_id}.append-{group}.tokens.parquet"))
    try:
        h = Harvest(cfg, adapter, saes, token_file)
        h.run()
        finalize(h, [token_file], run_id=run_id, group=group)
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
        states.append(state_file.load(p))
    base = {k: v for k, v in states[0]["config"].items() if k != "shard"}
    for s in states[1:]:
        if {k: v for k, v in s["config"].items() if k != "shard"} != base:
            raise UserError("shards were computed with different options; they cannot be merged")
    shards = sorted(s["config"]["shard"] for s in states)
    n = int(shards[0].split("/")[1])
    if shards != sorted(f"{i}/{n}" for i in range(n)):
        raise UserError(f"need exactly one of each shard 0/{n} .. {n - 1}/{n}, got {shards}")
    cfg = PrecomputeConfig.from_dict(base, shard=None, force=force, **({"db": db} if db else {}))
    adapter = load_model(cfg.model, cfg.device, cfg.dtype)
    saes = load_saes(cfg.saes, adapter, cfg.device, cfg.dtype)
    return merge_states(cfg, adapter, saes, states, [str(Path(d) / "tokens.parquet") for d in shard_dirs])


__all__ = ["merge_shards", "merge_states", "precompute"]
