"""Small real fixtures: a byte-level BPE tokenizer trained on CPython's docs, a random-weight
HookedTransformer, and SAEs saved and reloaded in sae_lens's format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

D_MODEL = 16
D_SAE = 64
N_CTX = 64


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([topics[k] for k in sorted(topics)][:80], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_ctx=N_CTX,
        d_head=4,
        n_heads=4,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
        device="cpu",  # TransformerLens picks a GPU where it sees one; the tests compare on the CPU
    )
    return HookedTransformer(cfg, tokenizer=tok).eval()


@pytest.fixture(scope="session")
def adapter(tiny_model):
    from backend.engine.models import HookedAdapter

    return HookedAdapter(tiny_model, name="tiny-random")


def make_sae(kind: str, hook: str, d_in: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        sae.b_enc.normal_(-1.5, 1.0)  # densities spread from rare to common
        sae.b_enc[:4] = -100.0  # and a few dead features
    return sae


@pytest.fixture(scope="session")
def sae_dirs(tmp_path_factory) -> dict[str, str]:
    """Two SAEs in sae_lens's saved format: ReLU on block 0's output, TopK on block 1's input."""
    root = tmp_path_factory.mktemp("saes")
    out = {}
    for name, kind, hook in (
        ("relu-b0", "standard", "blocks.0.hook_resid_post"),
        ("topk-b1", "topk", "blocks.1.hook_resid_pre"),
    ):
        make_sae(kind, hook, seed=len(out)).save_model(str(root / name))
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="session")
def loaded_saes(sae_dirs, adapter):
    from backend.config import SAESource
    from backend.engine.saes import load_saes

    return load_saes([SAESource(path=p) for p in sae_dirs.values()], adapter, "cpu", "float32")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> str:
    """A local JSONL corpus of CPython's topic documentation."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as fh:
        for k in sorted(topics)[:120]:
            fh.write(json.dumps({"text": topics[k]}) + "\n")
    return str(path)


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
    )
    base.update(overrides)
    return PrecomputeConfig(**base)


@pytest.fixture()
def small_cfg(tmp_path, corpus_file, sae_dirs):
    def make(**kw):
        base = dict(db=str(tmp_path / "f.duckdb"), corpus=corpus_file, n_tokens=24 * 32, batch_size=5, splice_seqs=4)
        base.update(kw)
        return tiny_config(sae_dirs=sae_dirs, **base)

    return make


@pytest.fixture(scope="session")
def build_tiny_db(sae_dirs, adapter, loaded_saes):
    """Build a small real feature database (tiny model, both SAEs) at `db` from `corpus`."""
    from backend.engine.pipeline import precompute

    def build(db: str, corpus: str) -> str:
        precompute(tiny_config(db, corpus, sae_dirs), adapter, loaded_saes)
        return db

    return build


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the tests' own; skipped where none is installed, except in CI
    (SAE_REQUIRE_POSTGRES=1), where a missing server fails the run."""
    from tests.postgres import Server, binaries

    if binaries() is None:
        if os.environ.get("SAE_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (SAE_REQUIRE_POSTGRES) but not installed")
        pytest.skip("no PostgreSQL server installed (apt-get install postgresql)")
    server = Server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def labels_store(request, tmp_path):
    """A fresh, empty labels store of each kind: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(autouse=True)
def _fresh_query_caches():
    from backend.store import queries

    queries.clear_caches()
    yield
    queries.clear_caches()


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
    queries.clear_caches()

    def make(page: str = "app.py", labeler: str | None = None, **params) -> AppTest:
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
