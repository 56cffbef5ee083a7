"""Small real fixtures: a byte-level BPE tokenizer trained on CPython's docs, a random-weight
HookedTransformer, and SAEs saved and reloaded in sae_lens's format."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings

import pytest

from tests.helpers import D_MODEL, make_sae, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the embedded corpus's parse cache (backend.paths.cache_dir) lives with this session, not in ~/.cache
os.environ.setdefault("SAE_DASHBOARD_CACHE", tempfile.mkdtemp(prefix="sae-dashboard-cache-"))
warnings.filterwarnings("ignore", category=DeprecationWarning)

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
def jumprelu_dirs(tmp_path_factory) -> dict[str, str]:
    """Two JumpReLU SAEs (Gemma Scope's architecture) in sae_lens's format, one family of two layers."""
    root = tmp_path_factory.mktemp("jumprelu")
    out = {}
    for name, hook in (("jump-b0", "blocks.0.hook_resid_post"), ("jump-b1", "blocks.1.hook_resid_post")):
        make_sae("jumprelu", hook, seed=10 + len(out)).save_model(str(root / name))
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
def tiny_db(tmp_path_factory, corpus_file, build_tiny_db) -> str:
    """One tiny feature database for tests that copy it into a data folder of their own."""
    return build_tiny_db(str(tmp_path_factory.mktemp("tiny") / "tiny.duckdb"), corpus_file)


@pytest.fixture()
def data_dir(tmp_path, tiny_db):
    """A data folder of this test's own holding a copy of the tiny database."""
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(tiny_db, d / "tiny.duckdb")
    return d


@pytest.fixture()
def app(data_dir, monkeypatch):
    """AppTest sessions over `data_dir` (tests.helpers.app_runner)."""
    from tests.helpers import app_runner

    return app_runner(data_dir, monkeypatch)


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
