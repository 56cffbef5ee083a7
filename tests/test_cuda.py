"""The precompute on a CUDA device gives the CPU's tables (skipped where torch sees no GPU):
what CUDA reveals (a tensor left on the wrong device, a dtype the GPU path changes) fails here."""

from __future__ import annotations

import copy
import os

import duckdb
import numpy as np
import pytest
import torch

from tests.helpers import tiny_config

OTHER = os.environ.get("SAE_TEST_SECOND_DEVICE", "cuda")
"""the device compared with the CPU; `cpu` checks this test itself on a machine without a GPU"""

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(OTHER == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _tables(db: str) -> dict:
    con = duckdb.connect(db, read_only=True)
    out = {
        "saes": con.execute("SELECT * FROM saes ORDER BY sae").df(),
        "features": con.execute(
            "SELECT sae, feature, count, density, max_act FROM features ORDER BY sae, feature"
        ).df(),
        "propagation": con.execute("SELECT sae, hook, resid_change FROM propagation ORDER BY sae, hook").df(),
        "splice_output": con.execute("SELECT mode, sae, clean, spliced FROM splice_output ORDER BY mode, sae").df(),
        "top": con.execute(
            "SELECT sae, feature, seq, pos, value FROM examples WHERE kind = 0 AND rank = 0 ORDER BY sae, feature"
        ).df(),
    }
    con.close()
    return out


def test_precompute_on_cuda_equals_cpu(tmp_path, corpus_file, sae_dirs, tiny_model):
    from backend.config import SAESource
    from backend.engine.models import HookedAdapter
    from backend.engine.pipeline import precompute
    from backend.engine.saes import load_saes

    dbs = {}
    for name, device in (("cpu", "cpu"), ("cuda", OTHER)):
        model = copy.deepcopy(tiny_model).to(device)
        adapter = HookedAdapter(model, name="tiny-random")
        saes = load_saes([SAESource(path=p) for p in sae_dirs.values()], adapter, device, "float32")
        cfg = tiny_config(
            str(tmp_path / f"{name}.duckdb"),
            corpus_file,
            sae_dirs,
            device=device,
            recon_every=1,
            splice_seqs=6,
            sae_context=16,
        )
        precompute(cfg, adapter, saes)
        dbs[name] = _tables(cfg.db)
    a, b = dbs["cpu"], dbs["cuda"]
    cols = ["n_tokens", "l0", "explained_variance", "ev_inside", "ev_beyond", "downstream_value"]
    np.testing.assert_allclose(a["saes"][cols].to_numpy(float), b["saes"][cols].to_numpy(float), rtol=1e-4)
    # counts may differ only where an activation sits within float rounding of zero
    diff = np.abs(a["features"]["count"].to_numpy() - b["features"]["count"].to_numpy())
    assert diff.sum() <= 0.001 * a["features"]["count"].sum()
    np.testing.assert_allclose(a["features"]["max_act"], b["features"]["max_act"], rtol=1e-4, atol=1e-5)
    same_top = (a["top"][["seq", "pos"]].to_numpy() == b["top"][["seq", "pos"]].to_numpy()).all(1).mean()
    assert same_top > 0.99
    for t, col in (("propagation", "resid_change"), ("splice_output", "spliced")):
        assert len(a[t]) == len(b[t]) > 0
        np.testing.assert_allclose(a[t][col], b[t][col], rtol=1e-4, err_msg=t)
