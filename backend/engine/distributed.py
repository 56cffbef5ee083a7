"""Many GPUs (or CPU processes) through Ray: the corpus is cut into N shards (every N-th
sequence, as `--shard I/N` does), each shard runs as a Ray task that returns its partial state
and token file, and this process merges them into one complete run with the same merge that
`merge-shards` uses, so the database equals one pass.

Ray retries a task whose worker process dies (up to MAX_RETRIES); an error of the input (a
UserError) is not retried. Ctrl-C cancels the tasks and marks the run interrupted. Ray is only
imported here, so runs without --workers never start it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from backend.config import PrecomputeConfig
from backend.engine import state_file
from backend.engine.finish import finish_states, new_file_removed_on_failure, run_meta
from backend.engine.harvest import Harvest
from backend.engine.models import load_model
from backend.engine.saes import expand_sources, load_saes
from backend.errors import UserError
from backend.paths import REPO
from backend.store import writes

MAX_RETRIES = 3


def _shard_state(cfg_dict: dict, progress) -> tuple[bytes, bytes]:
    """Run one shard in a Ray worker: (torch-saved state, token parquet bytes)."""
    cfg = PrecomputeConfig.from_dict(cfg_dict)
    adapter = load_model(cfg.model, cfg.device, cfg.dtype)
    saes = load_saes(cfg.saes, adapter, cfg.device, cfg.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = os.path.join(tmp, "tokens.parquet")
        h = Harvest(cfg, adapter, saes, token_file)
        h.progress = lambda n: progress.add.remote(n)
        h.run()
        return state_file.to_bytes(h.state_dict()), Path(token_file).read_bytes()


def precompute_ray(cfg: PrecomputeConfig) -> str:
    """`precompute --workers N [--ray-address A]`; returns the run id."""
    try:
        import ray
    except ImportError:
        raise UserError("--workers needs Ray: pip install ray") from None
    expand_sources(cfg.saes)
    writes.check_path(cfg.db)
    adapter = load_model(cfg.model, cfg.device, cfg.dtype)
    saes = load_saes(cfg.saes, adapter, cfg.device, cfg.dtype)  # fails on a bad SAE before any task starts
    n = cfg.workers
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # workers import this package: the repository goes on their path (on a cluster, every
            # node needs the project at the same path, as the README says)
            env = {"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}}
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, log_to_driver=False, runtime_env=env)
            else:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=env)
        except Exception as e:  # noqa: BLE001 - connection errors of every kind end here
            raise UserError(f"could not start or reach Ray ({cfg.ray_address or 'local'}): {e}") from None
    gpus = 1 if cfg.device.startswith("cuda") else 0

    @ray.remote
    class Progress:
        def __init__(self):
            self.n = 0

        def add(self, k: int) -> None:
            self.n += k

        def get(self) -> int:
            return self.n

    task = ray.remote(_shard_state).options(num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False)
    base = asdict(replace(cfg, workers=0, ray_address=None, force=False))
    run_id = cfg.run_id()
    db = Path(cfg.db)
    total = cfg.n_tokens or None
    try:
        with new_file_removed_on_failure(db), writes.running(cfg.db, run_id, run_meta(cfg, adapter), force=cfg.force):
            progress = Progress.remote()
            refs = [task.remote({**base, "shard": f"{i}/{n}"}, progress) for i in range(n)]
            bar = tqdm(total=total, unit="tok", desc=f"harvest ({n} Ray workers)", unit_scale=True, file=sys.stderr)
            try:
                pending = list(refs)
                while pending:
                    _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                    done = ray.get(progress.get.remote())
                    bar.update(done - bar.n)
                results = ray.get(refs)
            except KeyboardInterrupt:
                for r in refs:
                    ray.cancel(r, force=True)
                raise
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
                if isinstance(cause, UserError):
                    raise cause from None
                raise UserError(f"a Ray worker failed: {str(e).splitlines()[0][:300]}") from None
            finally:
                bar.close()
            with tempfile.TemporaryDirectory() as tmp:
                states, files = [], []
                for i, (state, tokens) in enumerate(results):
                    states.append(state_file.load(state, f"the state of Ray shard {i}"))
                    files.append(os.path.join(tmp, f"tokens-{i}.parquet"))
                    Path(files[-1]).write_bytes(tokens)
                finish_states(cfg, adapter, saes, states, files)
    finally:
        if started_here:
            ray.shutdown()
    return run_id
