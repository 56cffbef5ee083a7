"""The embedded default end to end on a tiny slice: real MiniLM, CPython docs, SAEs trained by sae_lens."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from backend.demo import DemoConfig, build_demo, demo_saes
from backend.engine.models import load_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    return build_demo(db, quick=True)


def test_demo_database_has_every_layer(demo_db):
    con = duckdb.connect(demo_db, read_only=True)
    assert con.execute("SELECT status, model FROM runs").fetchall() == [("complete", "all-MiniLM-L6-v2")]
    saes = con.execute(
        "SELECT sae, hook, architecture, d_sae, explained_variance, downstream_metric, train_context, ev_inside, "
        "ev_beyond FROM saes"
    ).df()
    # the SAEs were trained on 64-token contexts and read at 96: both sides of the context measured
    assert (saes["train_context"] == 64).all() and saes["ev_inside"].notna().all() and saes["ev_beyond"].notna().all()
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(6)]
    assert sorted(saes["hook"].unique()) == sorted(hooks)
    assert set(saes["architecture"]) == {"topk", "standard"} and len(saes) == 14  # as sae_lens names them
    assert (saes["downstream_metric"] == "contrastive_loss_recovered").all()
    dens = con.execute("SELECT density FROM features WHERE count > 0").df()["density"]
    assert len(dens) > 0 and ((dens > 0) & (dens <= 1)).all()
    assert con.execute("SELECT count(*) FROM features WHERE count = 0 AND density <> 0").fetchone() == (0,)
    effects = con.execute("SELECT DISTINCT effect_kind FROM saes").fetchall()
    assert effects == [("embed",)]  # an encoder has no unembedding: nearest input embeddings instead
    # error propagation on the encoder: each SAE at its own hook and every deeper one (7 hooks: 28
    # cells per family), its output as a cosine to the clean sentence embedding, a chain per family
    prop = con.execute("SELECT * FROM propagation").df()
    assert len(prop) == 56 and (prop["resid_change"] > 0).all()
    # the encoder's own contrastive loss on the sample's 2 pairs: between 0 and far above chance (log 2)
    out = con.execute("SELECT * FROM splice_output").df()
    assert set(out["metric"]) == {"contrastive_loss"} and set(out["n"]) == {2}
    assert ((out["clean"] >= 0) & (out["spliced"] >= 0) & (out["cosine"] <= 1)).all()
    assert sorted(out.groupby("mode").size().items()) == [
        ("ablated", 14),
        ("alone", 14),
        ("compound", 14),
        ("random", 14),
    ]
    ctx = con.execute("SELECT DISTINCT ctx_lo FROM splice_context ORDER BY 1").df()["ctx_lo"].tolist()
    assert ctx == [16, 32, 64, 96]
    steer = con.execute("SELECT sae, count(*) AS n, count(exact_plus) AS exact FROM steering GROUP BY sae").df()
    assert len(steer) == 14 and (steer["n"] == 384).all() and (steer["exact"] > 20).all()
    con.close()


def test_demo_highlights_match_a_recomputation(demo_db):
    from sae_lens import SAE

    con = duckdb.connect(demo_db, read_only=True)
    rows = con.execute("""
        SELECT e.sae, s.source, s.hook, e.feature, e.seq, e.pos, e.ctx_start, e.value, e.acts, q.tokens
        FROM examples e JOIN saes s USING (sae) JOIN sequences q ON q.seq = e.seq AND q.run_id = s.run_id
        WHERE e.rank = 0 ORDER BY e.sae, e.feature LIMIT 40""").df()
    con.close()
    adapter = load_model("embedded")
    checked = 0
    for r in rows.itertuples():
        sae = SAE.load_from_disk(r.source)
        tokens = torch.tensor([list(r.tokens)])
        with torch.no_grad():
            codes = sae.encode(adapter.activations(tokens, [r.hook])[r.hook])[0, :, r.feature]
        want = codes[r.ctx_start : r.ctx_start + len(r.acts)].numpy()
        window = np.asarray(r.tokens)[r.ctx_start : r.ctx_start + len(r.acts)]
        want[np.isin(window, adapter.tokenizer.all_special_ids)] = 0  # CLS, SEP and separators are excluded
        # windows shade the text in bfloat16 (3 significant digits); the example's own value is float32
        np.testing.assert_allclose(r.acts, want, rtol=2.0**-8 + 1e-3, atol=1e-4)
        assert r.value == pytest.approx(float(codes[r.pos]), rel=1e-3, abs=1e-4)
        checked += 1
    assert checked == len(rows) > 10


def test_demo_is_reused_not_rebuilt(demo_db, caplog):
    import os

    before = os.path.getmtime(demo_db)
    with caplog.at_level("INFO"):
        assert build_demo(demo_db, quick=True) == demo_db
    assert "exists" in caplog.text
    assert os.path.getmtime(demo_db) == before


def test_demo_config_defaults_are_the_documented_ones():
    cfg = DemoConfig()
    assert cfg.db == "data/demo.duckdb" and cfg.precompute.corpus == "embedded:heldout"
    assert cfg.train.corpus == "embedded:train" and set(cfg.train.architectures) == {"topk", "standard"}


def test_a_changed_training_recipe_retrains_the_saes(demo_db):
    """The SAE folder records the recipe it was trained with (split.json): SAEs of another recipe
    are not the ones the README's figures describe, so a changed recipe trains them again."""
    from pathlib import Path

    cfg = DemoConfig.quick(demo_db)
    saved = next(Path(cfg.saes).glob("*/cfg.json"))
    before = saved.stat().st_mtime_ns
    demo_saes(cfg)  # the same recipe: reused (build_demo's first step; its precompute is not needed here)
    assert saved.stat().st_mtime_ns == before
    cfg = DemoConfig.quick(demo_db)
    cfg.train.lr *= 2
    demo_saes(cfg)
    assert saved.stat().st_mtime_ns > before
