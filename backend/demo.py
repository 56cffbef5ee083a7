"""The embedded default: all-MiniLM-L6-v2 from pip, CPython's docs as corpus, SAEs trained here.

`python -m backend demo` builds data/demo.duckdb once (train SAEs on the corpus's train split,
precompute on its held-out split) and serves the dashboard; later starts reuse both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backend.config import PrecomputeConfig, SAESource, TrainConfig
from backend.engine.corpus import HELDOUT_FRACTION
from backend.errors import UserError
from backend.paths import REPO

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    db: str = "data/demo.duckdb"
    saes: str = "data/demo-saes"
    """where the trained SAEs live (reused when present)"""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            model="embedded",
            corpus="embedded:train",
            n_tokens=150_000,
            context_len=64,
            expansion=4,
            k=64,
            epochs=2,
            lr=2e-3,
        )
    )
    """the SAEs are trained on 64-token contexts; 2 epochs at lr 2e-3 reach the explained variance 3 epochs at 1e-3
    did (each SAE within 0.01, the ReLU SAEs at lower L0) in two thirds of the time"""
    precompute: PrecomputeConfig = field(
        default_factory=lambda: PrecomputeConfig(
            model="embedded",
            corpus="embedded:heldout",
            n_tokens=0,
            context_len=256,
            batch_size=16,
            splice_seqs=16,
            splice_every=24,
            steer_len=32,
            run_name="demo",
        )
    )
    """and read at 256 tokens (MiniLM takes 512): reconstruction is measured inside and past their training context;
    the splice sample is 8 pairs of adjacent windows spread over the held-out split (the encoder's contrastive loss
    needs negatives from other documents); the steering sweep measures on 32-token texts of those pairs, since each
    exact value is a forward of the sample (bench/splice.py)"""

    @classmethod
    def quick(cls, db: str) -> DemoConfig:
        """A few thousand tokens and narrow SAEs: the same path in seconds, for tests. The steering sweep reads
        32-token texts, as the full demo's does (at the whole 96-token context it was half this build's time)."""
        folder = str(Path(db).with_suffix("")) + "-saes"
        return cls(
            db=db,
            saes=folder,
            train=TrainConfig(
                model="embedded",
                corpus="embedded:train",
                n_tokens=6_000,
                context_len=64,
                expansion=1,
                k=8,
                epochs=2,
                train_batch=256,
            ),
            precompute=PrecomputeConfig(
                model="embedded",
                corpus="embedded:heldout",
                n_tokens=3_000,
                context_len=96,
                batch_size=16,
                splice_seqs=4,
                steer_len=32,
                run_name="demo-quick",
            ),
        )


def demo_saes(cfg: DemoConfig) -> list:
    """The demo's SAEs in cfg.saes: reused when split.json says they were trained with this
    recipe, split and context; trained (again) otherwise."""
    from backend.engine.train import train_saes

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg.train.out = cfg.saes
    split = Path(cfg.saes) / "split.json"
    recipe = {k: v for k, v in asdict(cfg.train).items() if k not in ("out", "force", "device")}
    want = json.dumps({"heldout_fraction": HELDOUT_FRACTION, "context_len": cfg.train.context_len, "train": recipe})
    if not split.exists() or split.read_text() != want:
        # SAEs trained on another train/held-out split would have seen some of the held-out text,
        # SAEs trained on another context length would misstate where "beyond" begins, and SAEs
        # of another recipe are not the ones the README's figures describe
        cfg.train.force = cfg.train.force or any(Path(cfg.saes).glob("*/cfg.json"))
    results = train_saes(cfg.train)
    split.write_text(want)
    return results


def build_demo(
    db: str = "data/demo.duckdb", quick: bool = False, force: bool = False, cfg: DemoConfig | None = None
) -> str:
    """Train (or reuse) the demo SAEs and precompute the database; returns its path."""
    from backend.engine.pipeline import precompute
    from backend.store.queries import problem

    cfg = cfg or (DemoConfig.quick(db) if quick else DemoConfig(db=db, saes=str(Path(db).parent / "demo-saes")))
    if Path(cfg.db).exists() and not force:
        why = problem(cfg.db)
        if why is None:
            log.info("%s exists; pass --force to rebuild it", cfg.db)
            return cfg.db
        log.warning("rebuilding %s: %s", cfg.db, why)
    log.info("demo 1/2: the SAEs in %s (those missing are trained: about 20 s each on 2 CPU cores)", cfg.saes)
    t0 = time.monotonic()
    results = demo_saes(cfg)
    log.info(
        "demo 2/2: the feature database (%s after the SAEs; the pass over the held-out split, then the "
        "final step with the steering sweep, each with its own bar and time left; about 3 min on 2 cores)",
        _minutes(time.monotonic() - t0),
    )
    # Build beside the target and move into place when complete: readers never see half a file.
    tmp = Path(cfg.db).with_name(f".building-{Path(cfg.db).name}")
    for leftover in (tmp, Path(str(tmp) + ".wal")):
        leftover.unlink(missing_ok=True)
    cfg.precompute.db = str(tmp)
    cfg.precompute.force = True
    cfg.precompute.saes = [SAESource(path=r.path) for r in results]
    try:
        precompute(cfg.precompute)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, cfg.db)
    log.info("built %s", cfg.db)
    return cfg.db


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def serve(db: str | None, port: int = 8501) -> None:
    """Run the Streamlit app over the folder holding `db` (default: data/)."""
    folder = str(Path(db).resolve().parent) if db else str((REPO / "data").resolve())
    if not Path(folder).is_dir():
        raise UserError(f"{folder} does not exist; build a database first with `python -m backend demo --no-serve`")
    env = dict(os.environ, SAE_DASHBOARD_DATA=folder)
    name = f"?db={Path(db).name}" if db else ""
    log.info("serving http://localhost:%s/%s  (Ctrl-C stops)", port, name)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
    ]
    # The server replaces this process rather than running beside it: a SIGTERM (a service
    # manager, `kill`) then stops the server itself instead of leaving it orphaned, and the memory
    # the build held is given back.
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(REPO)
    os.execve(sys.executable, cmd, env)
