"""Builders the tests share: a tiny SAE in sae_lens's format, precompute options sized for the
tiny model, small saved models and databases, and ways to run the CLI and the app as a user
would. Fixtures live in conftest.py and use these."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

D_MODEL = 16
D_SAE = 64


def make_sae(kind: str, hook: str, d_in: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=meta))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        sae.b_enc.normal_(-1.5, 1.0)  # densities spread from rare to common
        sae.b_enc[:4] = -100.0  # and a few dead features
        if kind == "jumprelu":  # thresholds from below 0 (where ReLU decides) to well above
            sae.b_enc.add_(0.5)
            sae.threshold.copy_(torch.linspace(-0.3, 1.0, d_sae)[torch.randperm(d_sae)])
    return sae


def tiny_config(db: str, corpus: str, sae_dirs: dict[str, str], **overrides):
    """Precompute options sized for the tiny model: one place for the numbers tests share."""
    from backend.config import PrecomputeConfig, SAESource

    base = dict(
        db=db,
        model="tiny-random",
        corpus=corpus,
        n_tokens=40 * 32,
        context_len=32,
        batch_size=8,
        n_top=6,
        n_buckets=3,
        per_bucket=2,
        left=4,
        right=2,
        saes=[SAESource(path=p) for p in sae_dirs.values()],
        feature_map="pca",  # UMAP (the default) is tested on its own and by the demo; here it would only add time
    )
    base.update(overrides)
    return PrecomputeConfig(**base)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def run_backend(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m backend ARGS` from the repository root, as a user types it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "backend", *args], cwd=repo_root(), capture_output=True, text=True, timeout=timeout
    )


def app_runner(data_dir, monkeypatch):
    """AppTest of the dashboard over `data_dir`, as a fresh browser session would open a URL:
    `make(page, labeler=None, **url_params)`; `labeler` stands for a name typed earlier in the
    session's sidebar (names never travel in URLs)."""
    from streamlit.testing.v1 import AppTest

    from backend.store import queries

    monkeypatch.setenv("SAE_DASHBOARD_DATA", str(data_dir))
    monkeypatch.delenv("SAE_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.delenv("SAE_DASHBOARD_LABELS", raising=False)
    monkeypatch.delenv("SAE_DASHBOARD_EXPLANATIONS", raising=False)
    monkeypatch.delenv("SAE_DASHBOARD_MODEL", raising=False)
    queries.clear_caches()

    def make(page: str = "app.py", /, labeler: str | None = None, **params) -> AppTest:
        at = AppTest.from_file(str(repo_root() / "app.py"), default_timeout=60)
        if page != "app.py":
            at.switch_page(page)
        for k, v in params.items():
            at.query_params[k] = v
        if labeler is not None:
            at.session_state["_labeler"] = labeler
        return at.run()

    return make


def save_tiny_gpt2(folder: Path, tokenizer_dir: str) -> str:
    """A tiny random GPT-2 saved as a Hugging Face folder (loadable by name in any process, as a
    hub model would be); returns its `--model` value, hf:FOLDER."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=4,
        n_positions=64,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return f"hf:{folder}"


def build_minilm_db(db: Path, sae_folder: Path, n_tokens: int = 64 * 24) -> str:
    """A small database over the embedded MiniLM and one TopK SAE (saved in sae_lens's format at
    `sae_folder`) at blocks.2.hook_resid_post, under run id "mini"."""
    from backend.config import PrecomputeConfig, SAESource
    from backend.engine.pipeline import precompute

    make_sae("topk", "blocks.2.hook_resid_post", d_in=384, d_sae=256, seed=3).save_model(str(sae_folder))
    precompute(
        PrecomputeConfig(
            db=str(db),
            model="embedded",
            corpus="embedded:heldout",
            n_tokens=n_tokens,
            context_len=64,
            batch_size=8,
            splice_seqs=2,
            run_name="mini",
            saes=[SAESource(path=str(sae_folder))],
        )
    )
    return str(db)


def merge_from_shards(make_cfg, n: int, adapter, saes) -> None:
    """Run `make_cfg(shard="i/n")` as n shards and merge their states into `make_cfg()`'s database,
    as `merge-shards` would."""
    from backend.engine import state_file
    from backend.engine.pipeline import merge_states, precompute

    states, files = [], []
    for i in range(n):
        out = precompute(make_cfg(shard=f"{i}/{n}"), adapter, saes)
        states.append(state_file.load(f"{out}/state.pt"))
        files.append(f"{out}/tokens.parquet")
    merge_states(make_cfg(), adapter, saes, states, files)


def query(db: str, sql: str):
    """A query's result as a DataFrame, from a read-only connection closed right after."""
    import duckdb

    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def queued(at) -> tuple[int, str]:
    """The feature the Label queue holds for this session, and the widget-key prefix of its
    verdict form: the test's look behind the page, which shows neither before a verdict."""

    def param(name, default):
        v = at.query_params.get(name) if hasattr(at.query_params, "get") else None
        v = v[0] if isinstance(v, list) else v
        return v or default

    suffix = f"_{param('mode', 'unlabeled')}_{param('step', '0')}"
    held = [v for k, v in at.session_state.items() if k.startswith("_queue_") and k.endswith(suffix)]
    assert held and "token" in held[0], "the queue holds no feature for this mode and step"
    return int(held[0]["feature"]), f"queue_{held[0]['token']}"
