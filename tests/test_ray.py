"""Many workers through Ray: a local Ray of 2 CPU workers gives the database of one pass, also
when a worker process is killed mid-shard (Ray retries its task)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.helpers import make_sae, save_tiny_gpt2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = (
    ("features", "sae, feature"),
    ("examples", "sae, feature, kind, rank"),
    ("sequences", "seq"),
    ("position_error", "sae, pos"),
    ("density_hist", "sae, bin_lo"),
    ("propagation", "sae, hook"),
    ("splice_output", "mode, sae"),
    ("splice_context", "sae, ctx_lo"),
    ("steering", "sae, feature"),
    ("steering_summary", "sae"),
)
# tables computed from float32 forwards on batches of other sizes: equal to float32 rounding
FLOAT32_FORWARDS = {"propagation", "splice_output", "splice_context", "steering", "steering_summary"}


@pytest.fixture(scope="module")
def gpt_inputs(tmp_path_factory, tokenizer_dir):
    """A tiny random GPT-2 saved as a Hugging Face folder and two SAEs: loadable by name in any
    worker process, as a real model would be."""
    root = tmp_path_factory.mktemp("ray")
    save_tiny_gpt2(root / "gpt", tokenizer_dir)
    make_sae("topk", "transformer.h.0", seed=1).save_model(str(root / "sae-h0"))
    make_sae("standard", "transformer.h.1", seed=2).save_model(str(root / "sae-h1"))
    # the embeddings (token + position): the same token at the same position reads the same value
    make_sae("standard", "transformer.drop", seed=3).save_model(str(root / "sae-emb"))
    return root


def _cfg(root, corpus, db, **kw):
    from backend.config import PrecomputeConfig, SAESource

    return PrecomputeConfig(
        db=str(db),
        model=f"hf:{root / 'gpt'}",
        corpus=corpus,
        n_tokens=kw.pop("n_tokens", 64 * 32),
        context_len=32,
        batch_size=4,
        n_top=5,
        splice_seqs=6,
        run_name="r",
        saes=[SAESource(path=str(root / n)) for n in ("sae-h0", "sae-h1", "sae-emb")],
        **kw,
    )


def _plain(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else np.asarray(v).tolist()


def _assert_equal(a_db, b_db):
    for name, order in TABLES:
        a = duckdb.connect(a_db, read_only=True).execute(f"SELECT * FROM {name} ORDER BY {order}").df()
        b = duckdb.connect(b_db, read_only=True).execute(f"SELECT * FROM {name} ORDER BY {order}").df()
        assert len(a) == len(b) > 0, name
        for col in a.columns:
            if pd.api.types.is_numeric_dtype(a[col]):
                rtol = 1e-5 if name in FLOAT32_FORWARDS else 1e-9
                np.testing.assert_allclose(
                    a[col].astype("float64"), b[col].astype("float64"), rtol=rtol, err_msg=f"{name}.{col}"
                )
            else:
                assert list(map(_plain, a[col])) == list(map(_plain, b[col])), f"{name}.{col}"


def test_ray_workers_equal_one_pass(gpt_inputs, tmp_path):
    """On a periodic corpus, where the embedding SAE's sampled examples tie: examples are compared
    row for row, rank and quantile included."""
    import json

    from backend.engine.pipeline import precompute

    corpus = tmp_path / "periodic.jsonl"
    corpus.write_text("".join(json.dumps({"text": "a b c d e f g " * 60}) + "\n" for _ in range(8)))
    one = _cfg(gpt_inputs, str(corpus), tmp_path / "one.duckdb")
    precompute(one)
    q = (
        duckdb.connect(one.db, read_only=True)
        .execute("SELECT feature, value FROM examples WHERE sae = 'sae-emb' AND kind = 1")
        .df()
    )
    assert q.duplicated().sum() > 5  # ties, or the comparison below would not test tie-breaking
    many = _cfg(gpt_inputs, str(corpus), tmp_path / "ray.duckdb", workers=2)
    assert precompute(many) == "r"
    _assert_equal(one.db, many.db)
    status = duckdb.connect(many.db, read_only=True).execute("SELECT status FROM runs").fetchall()
    assert status == [("complete",)]


def test_a_killed_worker_is_retried(gpt_inputs, corpus_file, tmp_path):
    """SIGKILL the first worker process seen running a shard; Ray reruns that task."""
    from backend.engine.pipeline import precompute

    one = _cfg(gpt_inputs, corpus_file, tmp_path / "one.duckdb", n_tokens=400 * 32)
    precompute(one)
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            out = subprocess.run(["pgrep", "-f", "ray::_shard_state"], capture_output=True, text=True).stdout.split()
            if out:
                time.sleep(1.0)  # mid-shard
                try:
                    os.kill(int(out[0]), signal.SIGKILL)
                    killed.append(int(out[0]))
                except ProcessLookupError:
                    continue
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    many = _cfg(gpt_inputs, corpus_file, tmp_path / "ray.duckdb", n_tokens=400 * 32, workers=2)
    precompute(many)
    t.join(timeout=5)
    assert killed, "no worker was seen running a shard"
    _assert_equal(one.db, many.db)
