"""The precompute against brute force on the same tokens, shard merging, failures and interrupts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from backend.engine.pipeline import precompute
from backend.errors import UserError
from tests.helpers import make_sae, merge_from_shards, repo_root, run_backend, save_tiny_gpt2

pytestmark = pytest.mark.integration


def _dense_codes(db, adapter, loaded):
    """Recompute every SAE's codes on the stored sequences: [S, T, d_sae] per SAE, with the
    positions of special tokens (BOS, and the EOS separators between documents) zeroed, and the
    [S, T] mask of counted positions. The SAEs are loaded afresh by sae_lens, so the
    precompute's TopK shortcut is not involved."""
    from sae_lens import SAE

    con = duckdb.connect(db, read_only=True)
    seqs = con.execute("SELECT seq, tokens FROM sequences ORDER BY seq").df()
    con.close()
    tokens = torch.tensor(np.stack(seqs["tokens"].to_numpy()), dtype=torch.long)
    valid = ~torch.isin(tokens, torch.tensor(adapter.tokenizer.all_special_ids))
    assert (~valid[:, 1:]).any(), "no separator inside a sequence: the test would not check their exclusion"
    out = {}
    with torch.no_grad():
        _, cache = adapter.model.run_with_cache(tokens)  # the whole model, not the adapter's shortcut
        acts = {s.hook: cache[s.hook] for s in loaded}
        for s in loaded:
            codes = SAE.load_from_disk(s.source).encode(acts[s.hook])
            codes[~valid] = 0  # special positions are excluded from statistics
            out[s.name] = (codes, acts[s.hook])
    return seqs["seq"].to_numpy(), out, valid


@pytest.mark.parametrize(
    "hooks",
    [
        ["blocks.1.hook_resid_pre"],  # block 1 does not run: its input is what block 0 returns
        ["blocks.0.hook_resid_pre"],  # no block runs
        ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"],
        ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
        ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid"],
    ],
)
def test_activations_are_the_full_forwards(adapter, hooks):
    tokens = torch.randint(0, adapter.model.cfg.d_vocab, (3, 9))
    _, cache = adapter.model.run_with_cache(tokens)
    got = adapter.activations(tokens, hooks)
    assert sorted(got) == sorted(hooks)
    for h in hooks:
        torch.testing.assert_close(got[h], cache[h], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("recon_every", "one_seq_at_a_time", "family"),
    [(1, False, "relu+topk"), (4, False, "relu+topk"), (4, True, "relu+topk"), (4, False, "jumprelu")],
)
def test_matches_brute_force(
    small_cfg, adapter, loaded_saes, jumprelu_dirs, recon_every, one_seq_at_a_time, family, monkeypatch
):
    """Everything equals a dense recomputation; reconstruction figures on exactly the sequences
    `recon_every` selects (all of them, or those of every 4th batch); also when every SAE encodes
    its batches a sequence at a time, as a wide SAE does; and for JumpReLU SAEs, whose codes the
    precompute reads from the pre-activations above each feature's threshold."""
    from backend.config import SAESource
    from backend.engine.harvest import Harvest
    from backend.engine.saes import load_saes

    if one_seq_at_a_time:
        monkeypatch.setattr(Harvest, "ENCODE_BYTES", 1)
    over = {}
    if family == "jumprelu":
        over["saes"] = [SAESource(path=p) for p in jumprelu_dirs.values()]
        loaded_saes = load_saes(over["saes"], adapter, "cpu", "float32")
        assert all(isinstance(s.floor, torch.Tensor) and s.sparse_decode for s in loaded_saes)
    cfg = small_cfg(recon_every=recon_every, sae_context=16, **over)  # the tiny SAEs record no context of their own
    precompute(cfg, adapter, loaded_saes)
    seq_ids, dense, counted = _dense_codes(cfg.db, adapter, loaded_saes)
    assert list(seq_ids) == list(range(len(seq_ids)))
    con = duckdb.connect(cfg.db, read_only=True)
    n_valid = int(counted.sum())
    assert con.execute("SELECT status, n_tokens FROM runs").fetchone() == ("complete", n_valid)
    for s in loaded_saes:
        codes, x = dense[s.name]
        feats = con.execute("SELECT * FROM features WHERE sae = ? ORDER BY feature", [s.name]).df()
        count = (codes > 0).sum((0, 1)).numpy()
        np.testing.assert_array_equal(feats["count"].to_numpy(), count)
        np.testing.assert_allclose(feats["density"].to_numpy(), count / n_valid)
        np.testing.assert_allclose(feats["max_act"].to_numpy(), codes.amax((0, 1)).numpy(), rtol=1e-5)
        assert (feats["hist"].map(sum).to_numpy() == count).all()
        # firing at >= 10% of the max: exact to within the histogram bin holding the threshold
        mx = codes.amax((0, 1))
        strict = (codes >= 0.1 * mx).sum((0, 1)).numpy() * (count > 0)
        loose = (codes >= 0.1 * mx / 10**0.125).sum((0, 1)).numpy() * (count > 0)
        ge10 = feats["count_ge_10pct"].to_numpy()
        assert ((strict <= ge10) & (ge10 <= loose)).all()
        assert (ge10 < count).any(), "some feature has activations below 10% of its max"
        # a sparse SAE has dead, rare and common features here, or the test proves little
        assert (count == 0).any() or s.sae.cfg.architecture() == "topk"
        if family == "jumprelu":  # codes between 0 and a feature's threshold are cut
            pre = s.pre_activations(x)[counted]
            assert ((pre > 0) & (pre <= s.sae.threshold)).any() and (s.sae.threshold < 0).any()
        assert 0 < (count > 0).sum()
        # correlation with token position over every counted token (0 where the feature is silent)
        diag = con.execute("SELECT * FROM feature_diagnostics WHERE sae = ? ORDER BY feature", [s.name]).df()
        a = codes[counted].double().numpy()
        pos = torch.arange(codes.shape[1]).expand(codes.shape[0], -1)[counted].double().numpy()
        want_corr = np.array([np.corrcoef(a[:, f], pos)[0, 1] if a[:, f].any() else np.nan for f in range(a.shape[1])])
        np.testing.assert_allclose(diag["pos_corr"].astype(float), want_corr, rtol=1e-4, atol=1e-5)
        assert np.isfinite(want_corr).sum() > 10
        # position profile: firings and activation sums per bucket of positions, and its KL from the tokens'
        from backend.positions import position_kl

        width, tokens = con.execute(
            "SELECT pos_width, pos_tokens FROM sae_diagnostics WHERE sae = ?", [s.name]
        ).fetchone()
        bucket = torch.arange(codes.shape[1]) // width
        fire_pos, act_pos = (codes > 0).sum(0).double(), codes.sum(0).double()  # [T, F]
        n_b = int(bucket.max()) + 1
        want_fire = torch.zeros(n_b, codes.shape[-1], dtype=torch.float64).index_add_(0, bucket, fire_pos).T.numpy()
        want_act = torch.zeros(n_b, codes.shape[-1], dtype=torch.float64).index_add_(0, bucket, act_pos).T.numpy()
        want_tok = torch.zeros(n_b).index_add_(0, bucket, counted.sum(0).float()).numpy()
        assert tokens == want_tok.astype(int).tolist() and width == -(-cfg.context_len // 32)
        np.testing.assert_array_equal(np.stack(diag["pos_fire"].to_numpy()), want_fire)
        np.testing.assert_allclose(np.stack(diag["pos_act"].to_numpy()), want_act, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(diag["pos_kl"].astype(float), position_kl(want_fire, want_tok), rtol=1e-4)

        ex = con.execute("SELECT * FROM examples WHERE sae = ?", [s.name]).df()
        flat = codes.reshape(-1, codes.shape[-1])
        T = cfg.context_len
        for f in range(codes.shape[-1]):
            col = flat[:, f]
            k = min(cfg.n_top, int((col > 0).sum()))
            want = set(torch.topk(col, k).indices.tolist()) if k else set()
            top = ex[(ex.feature == f) & (ex.kind == 0)].sort_values("rank")
            got = set((top.seq * T + top.pos).tolist())
            assert got == want, f"feature {f}: top examples differ from brute force"
            assert np.all(np.diff(top.value.to_numpy()) <= 0)
            q = ex[(ex.feature == f) & (ex.kind == 1)]
            assert len(q) == min(cfg.n_buckets * cfg.per_bucket, int((col > 0).sum()))
            # buckets rise with activation
            if len(q) > 1:
                by_bucket = q.groupby("quantile").value.agg(["min", "max"]).sort_index()
                assert (by_bucket["min"].to_numpy()[1:] >= by_bucket["max"].to_numpy()[:-1] - 1e-6).all()
        # every stored window equals the recomputed activations on those tokens, to bfloat16's
        # rounding (windows only shade text); the example's own token and value are exact
        for row in ex.sample(min(len(ex), 300), random_state=0).itertuples():
            want = codes[row.seq, row.ctx_start : row.ctx_start + len(row.acts), row.feature].numpy()
            np.testing.assert_allclose(row.acts, want, rtol=2.0**-8, atol=1e-6)
            assert row.value == pytest.approx(float(codes[row.seq, row.pos, row.feature]), rel=1e-5)
            assert row.acts[row.pos - row.ctx_start] == row.value
            assert row.ctx_start <= row.pos < row.ctx_start + len(row.acts)

        m = con.execute("SELECT * FROM saes WHERE sae = ?", [s.name]).df().iloc[0]
        valid = counted.clone()
        assert m.l0 == pytest.approx(float((codes[valid] > 0).sum(-1).double().mean()), rel=1e-6)
        measured = torch.as_tensor((seq_ids // cfg.batch_size) % recon_every == 0)
        assert 0 < int(measured.sum()) < len(seq_ids) or recon_every == 1
        valid &= measured[:, None]
        xv = x[valid].double()
        with torch.no_grad():
            err = (xv - s.sae.decode(codes[valid]).double()).pow(2).sum(-1)
        assert m.mse == pytest.approx(float(err.mean()), rel=1e-5)
        ev = 1 - err.sum() / (xv - xv.mean(0)).pow(2).sum()
        assert m.explained_variance == pytest.approx(float(ev), rel=1e-5, abs=1e-6)
        # inside (positions < 16) and beyond the training context
        assert m.train_context == 16
        for region, ev_col, rel_col in (
            (slice(0, 16), "ev_inside", "rel_error_inside"),
            (slice(16, None), "ev_beyond", "rel_error_beyond"),
        ):
            sel = torch.zeros_like(valid)
            sel[:, region] = valid[:, region]
            xr = x[sel].double()
            with torch.no_grad():
                er = (xr - s.sae.decode(codes[sel]).double()).pow(2).sum(-1)
            assert m[ev_col] == pytest.approx(float(1 - er.sum() / (xr - xr.mean(0)).pow(2).sum()), rel=1e-5)
            assert m[rel_col] == pytest.approx(float(er.sum() / xr.pow(2).sum()), rel=1e-5)
        pe = con.execute("SELECT pos, n, mse FROM position_error WHERE sae = ? ORDER BY pos", [s.name]).df()
        n_by_pos = valid.sum(0)
        assert pe.pos.tolist() == torch.nonzero(n_by_pos).squeeze(1).tolist()
        assert pe.n.tolist() == n_by_pos[n_by_pos > 0].tolist()
        with torch.no_grad():
            err_tok = (x.double() - s.sae.decode(codes).double()).pow(2).sum(-1) * valid
        np.testing.assert_allclose(
            pe.mse.to_numpy(), (err_tok.sum(0)[n_by_pos > 0] / n_by_pos[n_by_pos > 0]).numpy(), rtol=1e-5
        )
        assert m.n_dead == int((count == 0).sum())
        assert m.downstream_metric == "ce_loss_recovered" and np.isfinite(m.downstream_value)
        assert m.effect_kind == "unembed"
        # token effects are the extremes of W_dec[f] . W_U
        eff = con.execute(
            "SELECT * FROM token_effects WHERE sae = ? AND feature = 5 ORDER BY direction DESC, rank", [s.name]
        ).df()
        logits = (s.sae.W_dec[5] @ adapter.model.W_U).detach()
        assert eff[eff.direction == 1].token_id.tolist() == torch.topk(logits, 10).indices.tolist()
        assert eff[eff.direction == -1].token_id.tolist() == torch.topk(-logits, 10).indices.tolist()
    con.close()


def _plain(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else np.asarray(v).tolist()


def _table(db, name, order):
    con = duckdb.connect(db, read_only=True)
    df = con.execute(f"SELECT * FROM {name} ORDER BY {order}").df()
    con.close()
    return df


def test_topk_choice_is_sae_lens_encode(loaded_saes):
    """The TopK activation the precompute swaps in encodes exactly as sae_lens's, and the choice it
    keeps holds every nonzero code, including the zeros of chosen negative pre-activations."""
    import copy

    from backend.engine.saes import LoadedSAE, keep_topk_choice

    assert [type(s.sae.activation_fn).__name__ for s in loaded_saes] == ["ReLU", "_TopKKeepingChoice"]
    plain = make_sae("topk", "blocks.1.hook_resid_pre")
    with torch.no_grad():
        plain.b_enc.sub_(2.0)  # some tokens have fewer than k positive pre-activations
        plain.W_dec.mul_(torch.rand(plain.cfg.d_sae, 1) + 0.5)  # rows of unequal norm, for rescaling
    kept = copy.deepcopy(plain)
    keep_topk_choice(kept)
    torch.manual_seed(1)
    x = torch.randn(3, 7, plain.cfg.d_in)
    codes, (idx, vals) = LoadedSAE("t", "t", kept).encode(x)
    assert torch.equal(codes, plain.encode(x))
    assert idx.shape == (3, 7, plain.cfg.k) and (vals == 0).any()
    assert torch.equal(torch.zeros_like(codes).scatter_(-1, idx, vals), codes)
    # the decoder product as a sum of the chosen rows equals sae_lens's decode, with decoder-norm
    # rescaling too, and on a subset of rows as the harvest passes them
    rows = torch.tensor([0, 2])
    for rescale in (False, True):
        plain.cfg.rescale_acts_by_decoder_norm = kept.cfg.rescale_acts_by_decoder_norm = rescale
        want = plain.decode(plain.encode(x))
        codes_r, (idx_r, vals_r) = LoadedSAE("t", "t", kept).encode(x)
        fast = LoadedSAE("t", "t", kept, fast_decode=True)
        got = fast.decode(codes_r[rows], (idx_r[rows], vals_r[rows]))
        torch.testing.assert_close(got, want[rows], rtol=1e-5, atol=1e-5)
    plain.cfg.rescale_acts_by_decoder_norm = kept.cfg.rescale_acts_by_decoder_norm = False
    assert LoadedSAE("r", "r", loaded_saes[0].sae).encode(x)[1] is None
    # load_saes turns the fast path on only where it checked equal to this sae_lens's decode
    from backend.engine.saes import fast_decode_agrees

    assert [s.fast_decode for s in loaded_saes] == [False, True]
    assert fast_decode_agrees(LoadedSAE("t", "t", kept))
    broken = LoadedSAE("t", "t", copy.deepcopy(kept))
    broken.sae.hook_sae_recons = torch.nn.Identity()
    broken.sae.b_dec.data += 0  # still equal: the check compares outputs, not code
    assert fast_decode_agrees(broken)
    broken.sae.cfg.rescale_acts_by_decoder_norm = True
    broken._decode_chosen = lambda chosen: torch.zeros(1)  # a decode that drifted from sae_lens's
    assert not fast_decode_agrees(broken)
    # and a ReLU SAE decodes from the nonzeros the statistics found, equal to sae_lens's decode
    from backend.engine.saes import sparse_decode_agrees

    relu = loaded_saes[0]
    assert [s.sparse_decode for s in loaded_saes] == [True, False] and sparse_decode_agrees(relu)
    with torch.no_grad():
        dense = relu.sae.encode(x)
        row, feature = torch.nonzero(dense.reshape(-1, dense.shape[-1]), as_tuple=True)
        got = relu.decode_nonzeros(row, feature, dense.reshape(-1, dense.shape[-1])[row, feature], dense.shape[:-1])
        torch.testing.assert_close(got, relu.sae.decode(dense), rtol=1e-5, atol=1e-5)

    # statistics from the kept choice equal those from scanning the dense codes, masked tokens too
    from backend.engine.stats import FeatureStats, StatsSpec

    spec = StatsSpec(
        d_sae=plain.cfg.d_sae,
        d_in=plain.cfg.d_in,
        seq_len=7,
        n_top=3,
        n_buckets=5,
        per_bucket=5,
        left=2,
        right=1,
        seed=0,
    )
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 0] = mask[1, 4] = False
    a, b = FeatureStats(spec), FeatureStats(spec)
    a.update(codes.detach().clone(), torch.arange(3), mask)
    b.update(codes.detach().clone(), torch.arange(3), mask, (idx, vals))
    a.flush(), b.flush()
    assert torch.equal(a.hist, b.hist) and a.n_tokens == b.n_tokens == 17
    torch.testing.assert_close(a.sum_act, b.sum_act)
    for name in ("top", "reservoir"):
        for x_a, x_b in zip(getattr(a, name).ordered(), getattr(b, name).ordered()):
            assert torch.equal(x_a, x_b)


def test_pre_activation_path_is_sae_lens_encode(loaded_saes, adapter, jumprelu_dirs):
    """ReLU and JumpReLU codes read from the pre-activations above `floor` are sae_lens's encode,
    and the statistics and windows taken from them equal those taken from the dense codes,
    masked tokens included; a SAE whose activation is not sae_lens's plain ReLU gets no floor."""
    import copy

    from backend.config import SAESource
    from backend.engine.saes import LoadedSAE, floor_agrees, load_saes
    from backend.engine.stats import FeatureStats, StatsSpec

    assert [s.floor for s in loaded_saes] == [0.0, None]
    jump = load_saes([SAESource(path=p) for p in jumprelu_dirs.values()], adapter, "cpu", "float32")[0]
    torch.manual_seed(2)
    x = torch.randn(3, 7, jump.sae.cfg.d_in) * 3
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 0] = mask[2, 3] = False
    for s in (loaded_saes[0], jump):
        with torch.no_grad():
            codes, pre = s.sae.encode(x), s.pre_activations(x)
        assert torch.equal(s.codes_from(pre), codes)
        cut = (pre > 0) & (codes == 0)
        assert not cut.any() if s is loaded_saes[0] else cut.any()  # JumpReLU cuts codes below thresholds
        spec = StatsSpec(d_sae=codes.shape[-1], d_in=x.shape[-1], seq_len=7, n_top=3, n_buckets=5, per_bucket=5,
                         left=2, right=1, seed=0, pos_buckets=3)  # fmt: skip
        a, b = FeatureStats(spec), FeatureStats(spec)
        nz_a = a.update(codes.clone(), torch.arange(3), mask)
        nz_b = b.update(pre.clone(), torch.arange(3), mask, floor=s.floor)
        for f in ("row", "feature", "value"):
            assert torch.equal(getattr(nz_a, f), getattr(nz_b, f))
        a.flush(), b.flush()
        assert torch.equal(a.hist, b.hist) and a.n_tokens == b.n_tokens == 17
        assert torch.equal(a.sum_act, b.sum_act)
        for name in ("top", "reservoir"):
            for x_a, x_b in zip(getattr(a, name).ordered(), getattr(b, name).ordered()):
                assert torch.equal(x_a, x_b)
        # the position profile in buckets of 3 positions (0-2, 3-5, 6), masked tokens left out
        fire, act, tokens = b.position_profile()
        kept = codes * mask[..., None]
        for k, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 7)]):
            np.testing.assert_array_equal(fire[:, k], (kept[:, lo:hi] > 0).sum((0, 1)).numpy())
            np.testing.assert_allclose(act[:, k], kept[:, lo:hi].sum((0, 1)).double().numpy(), rtol=1e-6)
            assert tokens[k] == int(mask[:, lo:hi].sum())
    odd = LoadedSAE("t", "t", copy.deepcopy(jump.sae))
    assert floor_agrees(odd)
    odd.sae.activation_fn = torch.nn.GELU()  # not the activation whose floor is known
    assert not floor_agrees(odd)


@pytest.mark.parametrize("floor", ["relu", "per-feature"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_loops_equal_torch(floor, threads, monkeypatch):
    """The compiled scan and sums (nonzero_loops) give exactly what the torch path gives: the same
    nonzeros in the same order and dtypes, the same sums bit for bit, the same kept sets, over
    masked rows, a batch dense enough that the scan's buffers must grow, and any thread count."""
    from backend.engine.stats import FeatureStats, StatsSpec

    torch.manual_seed(threads)
    F, B, T = 300, 4, 40
    spec = StatsSpec(d_sae=F, d_in=8, seq_len=T, n_top=4, n_buckets=3, per_bucket=3, left=2, right=1, seed=3,
                     pos_buckets=6)  # fmt: skip
    fl = 0.0 if floor == "relu" else torch.rand(F) * 2
    batches = []
    for i in range(5):
        pre = torch.randn(B, T, F) * (0.3 if i else 3.0)  # batch 0 fires on about 4 codes in 10
        mask = torch.rand(B, T) > 0.1
        batches.append((pre, torch.arange(B) + B * i, mask))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    got = {}
    for compiled in (True, False):
        if compiled:
            monkeypatch.delenv("SAE_DASHBOARD_NO_NUMBA", raising=False)
        else:
            monkeypatch.setenv("SAE_DASHBOARD_NO_NUMBA", "1")
        st = FeatureStats(spec)
        nzs = [st.update(pre.clone(), seqs, mask, floor=fl) for pre, seqs, mask in batches]
        st.flush()
        got[compiled] = st, nzs
    (a, nz_a), (b, nz_b) = got[True], got[False]
    assert sum(n.row.numel() for n in nz_a) > 0.3 * B * T * F / 5 * (1 if floor == "relu" else 0.1)
    for x, y in zip(nz_a, nz_b):
        for f in ("row", "feature", "value"):
            assert getattr(x, f).dtype == getattr(y, f).dtype and torch.equal(getattr(x, f), getattr(y, f))
    for name in FeatureStats._SUMS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("top", "reservoir"):
        for x_a, x_b in zip(getattr(a, name).ordered(), getattr(b, name).ordered()):
            assert torch.equal(x_a, x_b)


def test_two_shards_merge_to_one_pass(small_cfg, adapter, loaded_saes, tmp_path):
    """Every table, and the downstream metric: its sample (7 sequences) spans two batches of the
    single pass and falls differently into the shards' batches."""
    one = small_cfg(db=str(tmp_path / "one.duckdb"), splice_seqs=7)
    precompute(one, adapter, loaded_saes)
    merged = small_cfg(db=str(tmp_path / "sharded.duckdb"), splice_seqs=7)
    merge_from_shards(lambda **kw: small_cfg(db=merged.db, splice_seqs=7, **kw), 2, adapter, loaded_saes)

    for name, order in (
        ("features", "sae, feature"),
        ("examples", "sae, feature, kind, rank"),
        ("sequences", "seq"),
        ("position_error", "sae, pos"),
        ("density_hist", "sae, bin_lo"),
        ("feature_diagnostics", "sae, feature"),
        ("sae_diagnostics", "sae"),
    ):
        a, b = _table(one.db, name, order), _table(merged.db, name, order)
        assert len(a) == len(b) > 0, name
        for col in a.columns:
            if not pd.api.types.is_numeric_dtype(a[col]):
                assert list(map(_plain, a[col])) == list(map(_plain, b[col])), f"{name}.{col}"
            else:
                np.testing.assert_allclose(
                    a[col].astype("float64").to_numpy(),
                    b[col].astype("float64").to_numpy(),
                    rtol=1e-6 if name == "feature_diagnostics" else 1e-9,  # float32 columns
                    err_msg=f"{name}.{col}",
                )
    sa, sb = _table(one.db, "saes", "sae"), _table(merged.db, "saes", "sae")
    cols = ("l0", "mse", "explained_variance", "n_dead", "n_dense", "n_tokens")
    cols += ("downstream_value", "downstream_clean", "downstream_spliced", "downstream_ablated")
    assert sa["downstream_value"].notna().all()
    for col in cols:
        # the spliced forwards run in float32 on batches of other sizes: equal to float32 rounding
        # (the shards' own first sequences, as before, were 0.03-0.12 apart)
        rtol = 1e-5 if col.startswith("downstream") else 1e-9
        np.testing.assert_allclose(sa[col].to_numpy(float), sb[col].to_numpy(float), rtol=rtol, err_msg=col)


def test_appended_groups_equal_one_pass(small_cfg, adapter, loaded_saes, sae_dirs, corpus_file, tmp_path):
    """Two groups built with --append hold, for every per-SAE table and the `saes` row, what one
    pass over both SAEs writes; the run keeps one id, its sequences and vocabulary once. Appending
    with other options, an SAE the run has, or a corpus that now gives other tokens is a one-line
    error that adds nothing."""
    import dataclasses
    import shutil

    from backend.config import SAESource
    from backend.store.schema import DERIVED_SAE_TABLES, PROPAGATION_TABLES, SAE_TABLES

    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(corpus_file, corpus)
    srcs = [SAESource(path=p) for p in sae_dirs.values()]
    opts = dict(corpus=str(corpus), splice_seqs=7)
    one = small_cfg(db=str(tmp_path / "one.duckdb"), saes=srcs, **opts)
    precompute(one, adapter, loaded_saes)
    db = str(tmp_path / "groups.duckdb")
    run_id = precompute(small_cfg(db=db, saes=srcs[:1], **opts), adapter, loaded_saes[:1])
    assert precompute(small_cfg(db=db, saes=srcs[1:], append=True, **opts), adapter, loaded_saes[1:]) == run_id

    order = {"examples": "sae, feature, kind, rank", "features": "sae, feature", "position_error": "sae, pos",
             "density_hist": "sae, bin_lo", "token_effects": "ALL", "neighbours": "ALL", "steering": "ALL",
             "saes": "sae", "sequences": "seq", "sequence_text": "seq", "vocab": "token_id"}  # fmt: skip
    for name in (*SAE_TABLES, *DERIVED_SAE_TABLES, *PROPAGATION_TABLES, "saes", "sequences", "sequence_text", "vocab"):
        a, b = _table(one.db, name, order.get(name, "ALL")), _table(db, name, order.get(name, "ALL"))
        if name == "saes":
            assert list(b["grp"]) == [0, 1] and list(a["grp"]) == [0, 0]
            a, b = a.drop(columns=["grp", "run_id"]), b.drop(columns=["grp", "run_id"])
        a, b = a.drop(columns=["run_id"], errors="ignore"), b.drop(columns=["run_id"], errors="ignore")
        assert len(a) == len(b) and (len(a) > 0 or name == "propagation_recon"), name  # no family pair here
        for col in a.columns:
            assert list(map(_plain, a[col])) == list(map(_plain, b[col])), f"{name}.{col}"
    runs = _table(db, "runs", "run_id")
    assert list(runs["run_id"]) == [run_id] and list(runs["status"]) == ["complete"]

    def refused(cfg, saes, words):
        before = _table(db, "saes", "sae")
        with pytest.raises(UserError, match=words):
            precompute(cfg, adapter, saes)
        assert _table(db, "saes", "sae").equals(before)

    refused(small_cfg(db=db, saes=srcs[1:], append=True, **{**opts, "n_top": 3}), loaded_saes[1:], "no complete run")
    refused(small_cfg(db=db, saes=srcs[1:], append=True, **opts), loaded_saes[1:], "already has topk-b1")
    corpus.write_text(corpus.read_text().replace("the", "a"))
    again = dataclasses.replace(loaded_saes[0], name="relu-again")
    refused(small_cfg(db=db, saes=srcs[:1], append=True, **opts), [again], "other tokens than run")
    assert not list(tmp_path.glob(".groups.duckdb.*"))  # no token file or spool left behind


def test_mismatched_sae_fails_fast(adapter, tmp_path):
    from backend.config import SAESource
    from backend.engine.saes import load_saes

    make_sae("standard", "blocks.0.hook_resid_post", d_in=8).save_model(str(tmp_path / "narrow"))
    with pytest.raises(UserError, match=r"d_in=8 .* d_model=16"):
        load_saes([SAESource(path=str(tmp_path / "narrow"))], adapter, "cpu", "float32")
    make_sae("standard", "blocks.7.hook_resid_post").save_model(str(tmp_path / "deep"))
    with pytest.raises(UserError, match=r"hook 'blocks.7.hook_resid_post' does not exist.*did you mean"):
        load_saes([SAESource(path=str(tmp_path / "deep"))], adapter, "cpu", "float32")
    with pytest.raises(
        UserError, match=r"unknown sae_lens release 'gpt2-small-res-jbb'; did you mean gpt2-small-res-jb"
    ):
        load_saes([SAESource(release="gpt2-small-res-jbb", sae_id="x")], adapter, "cpu", "float32")
    with pytest.raises(UserError, match=r"no SAE id matching 'blocks.8.hook_resid_pos'; did you mean"):
        load_saes([SAESource(release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pos")], adapter, "cpu", "float32")


@pytest.mark.slow
def test_cli_mismatch_is_one_line_not_a_traceback(tmp_path):
    make_sae("standard", "blocks.0.hook_resid_post", d_in=8).save_model(str(tmp_path / "narrow"))
    r = run_backend(
        "precompute", "--sae", str(tmp_path / "narrow"), "--db", str(tmp_path / "x.duckdb"), "--n-tokens", "256"
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error: SAE" in r.stderr and "d_in=8" in r.stderr and "d_model=384" in r.stderr


def test_pattern_expands_registry_ids():
    from backend.config import SAESource
    from backend.engine.saes import expand_sources

    got = expand_sources([SAESource(release="gpt2-small-res-jb", sae_id="blocks.*.hook_resid_pre")])
    assert [s.sae_id for s in got] == [f"blocks.{i}.hook_resid_pre" for i in range(12)]


class _Interrupting:
    """Delegates to a real adapter and raises KeyboardInterrupt on the n-th forward pass."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def activations(self, tokens, hooks):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.inner.activations(tokens, hooks)


def test_interrupted_run_is_marked_and_restarts_cleanly(small_cfg, adapter, loaded_saes):
    cfg = small_cfg()
    with pytest.raises(KeyboardInterrupt):
        precompute(cfg, _Interrupting(adapter, 2), loaded_saes)
    con = duckdb.connect(cfg.db, read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    for t in ("saes", "features", "examples", "sequences"):
        assert con.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)
    con.close()
    precompute(cfg, adapter, loaded_saes)  # the same command again restarts it
    con = duckdb.connect(cfg.db, read_only=True)
    assert con.execute("SELECT status FROM runs").fetchall() == [("complete",)]
    n_seq = con.execute("SELECT count(*), count(DISTINCT seq) FROM sequences").fetchone()
    assert n_seq[0] == n_seq[1] == 24
    assert con.execute("SELECT count(*) FROM features").fetchone() == (2 * 64,)
    con.close()
    with pytest.raises(UserError, match="already complete"):
        precompute(cfg, adapter, loaded_saes)


def test_failure_in_the_final_step_leaves_no_rows_and_no_spool(small_cfg, adapter, loaded_saes, monkeypatch):
    """The final step spools each SAE's tables before one transaction writes them all: a failure
    after the first SAE's tables were spooled leaves no row of the run and no spool files."""
    import glob

    from backend.engine import weights
    from backend.store.writes import RunWriter

    real, calls = weights.neighbours, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            assert glob.glob(str(Path(cfg.db).parent / ".*spool/*.parquet"))  # the first SAE's tables
            raise RuntimeError("disk on fire")
        return real(*a, **kw)

    monkeypatch.setattr(RunWriter, "IN_MEMORY", 0)  # spool everything, as a wide run does

    tables = ("saes", "features", "examples", "sequences", "vocab", "token_effects", "neighbours", "propagation")

    def counts():
        con = duckdb.connect(cfg.db, read_only=True)
        try:
            runs = con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
            return runs, [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
        finally:
            con.close()

    cfg = small_cfg(run_name="b")
    precompute(small_cfg(run_name="a"), adapter, loaded_saes)  # the file holds a complete run already
    before = counts()[1]
    assert min(before) > 0
    monkeypatch.setattr(weights, "neighbours", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        precompute(cfg, adapter, loaded_saes)
    assert glob.glob(str(Path(cfg.db).parent / ".*spool*")) == []
    assert counts() == ([("a", "complete"), ("b", "failed")], before)
    monkeypatch.setattr(weights, "neighbours", real)
    precompute(cfg, adapter, loaded_saes)
    runs, after = counts()
    assert runs == [("a", "complete"), ("b", "complete")]
    assert after == [2 * n for n in before]


def test_too_short_corpus_is_a_clear_error(small_cfg, adapter, loaded_saes, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(UserError, match="too short"):
        precompute(small_cfg(corpus=str(short)), adapter, loaded_saes)
    with pytest.raises(UserError, match="does not exist"):
        precompute(small_cfg(corpus=str(tmp_path / "missing.jsonl")), adapter, loaded_saes)


def test_corpus_error_mid_stream_fails_the_run_cleanly(small_cfg, adapter, loaded_saes, tmp_path):
    """The corpus is read in a background thread; an error there after some batches surfaces as
    the same one-line message and leaves the run marked failed, with no partial rows, in a file
    that holds other runs; a file the failed run itself created is removed."""
    import json

    bad = tmp_path / "late.jsonl"
    good = [json.dumps({"text": f"line {i} of a corpus that turns bad later on, with words."}) for i in range(400)]
    bad.write_text("\n".join(good) + "\nnot json\n")
    cfg = small_cfg(corpus=str(bad), n_tokens=10**6, batch_size=2)
    with pytest.raises(UserError, match="late.jsonl:401 is not valid JSON"):
        precompute(cfg, adapter, loaded_saes)
    assert not os.path.exists(cfg.db), "a new file holding only a failed run is removed"

    precompute(small_cfg(run_name="good"), adapter, loaded_saes)
    with pytest.raises(UserError, match="late.jsonl:401 is not valid JSON"):
        precompute(cfg, adapter, loaded_saes)
    con = duckdb.connect(cfg.db, read_only=True)
    assert con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall() == [
        ("good", "complete"),
        (cfg.run_id(), "failed"),
    ]
    assert con.execute("SELECT count(DISTINCT sae) FROM features").fetchone() == (2,)  # the good run's only
    con.close()


@pytest.mark.slow  # a process of its own: seconds
def test_info_cli_prints_runs_and_metrics(small_cfg, adapter, loaded_saes):
    cfg = small_cfg()
    precompute(cfg, adapter, loaded_saes)
    r = run_backend("info", cfg.db, "--json")
    import json

    info = json.loads(r.stdout)
    assert info["runs"][0]["status"] == "complete"
    assert {s["sae"] for s in info["saes"]} == {"relu-b0", "topk-b1"}
    for s in info["saes"]:
        assert s["hook"] in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre")
        assert 0 <= s["dead_frac"] <= 1 and s["l0"] > 0 and s["downstream_metric"] == "ce_loss_recovered"
    r = run_backend("info", cfg.db)
    assert "relu-b0" in r.stdout and "complete" in r.stdout


def test_hf_causal_lm_through_sae_lens(tmp_path, tokenizer_dir, corpus_file):
    """The AutoModelForCausalLM path (sae_lens's HookedProxyLM) on a tiny random GPT-2 saved locally."""
    from backend.config import PrecomputeConfig, SAESource

    model = save_tiny_gpt2(tmp_path / "gpt", tokenizer_dir)
    make_sae("topk", "transformer.h.0").save_model(str(tmp_path / "sae"))
    cfg = PrecomputeConfig(
        db=str(tmp_path / "hf.duckdb"),
        model=model,
        corpus=corpus_file,
        n_tokens=256,
        context_len=32,
        batch_size=4,
        saes=[SAESource(path=str(tmp_path / "sae"))],
    )
    precompute(cfg)
    con = duckdb.connect(cfg.db, read_only=True)
    row = con.execute("SELECT hook, depth, l0, downstream_metric, effect_kind FROM saes").fetchone()
    assert row[0] == "transformer.h.0" and row[1] == 0.5 and 0 < row[2] <= 8
    assert row[3] == "ce_loss_recovered" and row[4] == "unembed"
    assert con.execute("SELECT count(*) FROM examples").fetchone()[0] > 0


def test_local_corpus_formats(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    from backend.engine.corpus import documents, token_contexts

    (tmp_path / "a.txt").write_text("first paragraph here\n\nsecond one")
    pd.DataFrame({"body": ["alpha beta", "gamma"]}).to_parquet(tmp_path / "a.parquet")
    assert list(documents(str(tmp_path / "a.txt"))) == ["first paragraph here", "second one"]
    assert list(documents(str(tmp_path / "a.parquet"), text_field="body")) == ["alpha beta", "gamma"]
    with pytest.raises(UserError, match="no column 'text'"):
        list(documents(str(tmp_path / "a.parquet")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2 is not valid JSON"):
        list(documents(str(tmp_path / "bad.jsonl")))
    (tmp_path / "binary.jsonl").write_bytes(b'{"text": "ok"}\n' + bytes(range(128, 256)) * 4)
    with pytest.raises(UserError, match="binary.jsonl is not UTF-8"):
        list(documents(str(tmp_path / "binary.jsonl")))
    (tmp_path / "binary.parquet").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="not a readable Parquet file"):
        list(documents(str(tmp_path / "binary.parquet")))
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        list(documents(str(tmp_path / "folder.jsonl")))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    chunks = list(token_contexts(iter(["hello world " * 20] * 3), tok, 10))
    assert all(len(c) == 10 for c in chunks) and len(chunks) >= 6


def test_embedded_corpus_is_parsed_once_and_kept_in_the_cache(tmp_path, monkeypatch):
    """The stdlib's docstrings are parsed once: a second read comes from the cache file (a mark
    put into it shows), a changed source set parses again under a new key, and a cache that
    cannot be read or written only costs the parse."""
    import json
    from pydoc_data.topics import topics

    from backend.engine import corpus

    cache = tmp_path / "cache"
    monkeypatch.setenv("SAE_DASHBOARD_CACHE", str(cache))
    real = corpus._stdlib_sources

    def first_files(n: int) -> None:  # a quick parse: the topics and n source files
        monkeypatch.setattr(corpus, "_stdlib_sources", lambda root: sorted(real(root))[:n])

    first_files(12)
    first = list(corpus.embedded_documents("all"))
    assert len(first) > len(topics)
    (cached,) = cache.glob("embedded-corpus-*.json")
    docs = json.loads(cached.read_text())
    docs[0][1] = "marked"
    cached.write_text(json.dumps(docs))
    assert next(corpus.embedded_documents("all")) == "marked"

    first_files(11)
    fewer = list(corpus.embedded_documents("all"))
    assert len(list(cache.glob("embedded-corpus-*.json"))) == 2 and fewer == first[: len(fewer)]

    first_files(12)
    cached.write_text("[not json")
    assert list(corpus.embedded_documents("all")) == first  # parsed again
    assert json.loads(cached.read_text()) == [list(d) for d in corpus._embedded_named_documents()]  # and rewritten
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("SAE_DASHBOARD_CACHE", str(blocked / "cache"))
    assert list(corpus.embedded_documents("all")) == first
    assert not list(tmp_path.glob("**/.embedded-corpus-*.tmp"))


@pytest.mark.slow
def test_killed_precompute_leaves_database_readable_and_reruns_cleanly(tmp_path):
    """SIGKILL mid-harvest (no Python cleanup runs): the file opens, the run reads as unfinished,
    no partial rows exist, and the same run name then completes without duplicates."""
    import os
    import signal

    make_sae("topk", "blocks.2.hook_resid_post", d_in=384, d_sae=128).save_model(str(tmp_path / "sae"))
    db = str(tmp_path / "k.duckdb")
    cmd = [
        sys.executable,
        "-m",
        "backend",
        "precompute",
        "--sae",
        str(tmp_path / "sae"),
        "--db",
        db,
        "--run-name",
        "r",
        "--batch-size",
        "4",
    ]
    import threading

    proc = subprocess.Popen(cmd + ["--n-tokens", "500000"], cwd=repo_root(), stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(180, proc.kill)  # a hung start ends the read below instead of the suite
    watchdog.start()
    seen = ""
    while "harvest" not in seen:  # the run is registered and streaming
        ch = proc.stderr.read(1)
        assert ch, f"precompute ended (or hung for 180 s) before it started harvesting: {seen[-500:]}"
        seen += ch
    watchdog.cancel()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT run_id, status FROM runs").fetchall() == [("r", "running")]
    assert con.execute("SELECT count(*) FROM saes").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM examples").fetchone() == (0,)
    con.close()
    r = subprocess.run(cmd + ["--n-tokens", "1024"], cwd=repo_root(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT run_id, status FROM runs").fetchall() == [("r", "complete")]
    assert con.execute("SELECT count(*), count(DISTINCT seq) FROM sequences").fetchone() == (8, 8)
    assert con.execute("SELECT count(*) FROM features").fetchone() == (128,)
    con.close()


def test_cli_bad_options_are_one_line_before_any_work(tmp_path, sae_dirs, capsys):
    """Bad options fail at once with one line and exit code 2, and write nothing (the CLI runs in
    this process; test_cli_mismatch_is_one_line_not_a_traceback runs it as a process)."""
    from backend.__main__ import main

    (tmp_path / "afile").write_text("x")
    sae = next(iter(sae_dirs.values()))
    cases = [
        (["--dtype", "int8"], "--dtype 'int8'"),
        (["--db", str(tmp_path / "afile" / "x.duckdb")], "cannot create the folder"),
        (["--db", str(tmp_path)], "is a folder"),
        (["--n-tokens", "-5"], "must be positive"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        code = main(["precompute", "--sae", sae, "--db", str(tmp_path / "f.duckdb"), *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert "Traceback" not in err and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "f.duckdb").exists()


def test_bpe_display_is_each_ids_own_decode(adapter):
    tok = adapter.tokenizer
    assert hasattr(tok, "backend_tokenizer") and not tok.clean_up_tokenization_spaces  # the batched path
    assert adapter.token_strings() == [tok.decode([i]) for i in range(len(tok))]


@pytest.mark.slow
def test_wordpiece_display_keeps_the_space_before_brackets():
    from backend.engine.models import load_model

    adapter = load_model("embedded")
    strings = adapter.token_strings()
    vocab = adapter.tokenizer.get_vocab()
    assert strings[vocab["["]] == " [" and strings[vocab["]"]] == " ]"  # word starts, like " the"
    assert strings[vocab["[CLS]"]] == "[CLS]" and strings[vocab["[SEP]"]] == "[SEP]"
    assert strings[vocab["[unused5]"]] == "[unused5]"
    assert strings[vocab["##ing"]] == "ing" and strings[vocab["the"]] == " the"


def test_context_metrics_are_null_where_they_do_not_apply(small_cfg, adapter, loaded_saes):
    unknown = small_cfg()
    precompute(unknown, adapter, loaded_saes)
    within = small_cfg(db=unknown.db.replace("f.duckdb", "g.duckdb"), sae_context=64, recon_every=1)
    precompute(within, adapter, loaded_saes)
    for cfg, want_inside in ((unknown, False), (within, True)):
        con = duckdb.connect(cfg.db, read_only=True)
        rows = con.execute("SELECT train_context, explained_variance, ev_inside, ev_beyond FROM saes").fetchall()
        con.close()
        for context, ev, inside, beyond in rows:
            assert beyond is None  # never read past the context (or the context is unknown)
            if want_inside:
                assert context == 64 and inside == pytest.approx(ev, rel=1e-9)  # every position is inside
            else:
                assert context is None and inside is None


def test_merge_equals_one_pass_on_tied_activations(tmp_path, adapter, tmp_path_factory):
    """An SAE at the embeddings reads the same value wherever the same token sits at the same
    position, and a periodic corpus puts it there in many sequences: examples with tied values
    must get the same rank and quantile from a shard merge as from one pass."""
    import json

    from backend.config import SAESource
    from backend.engine.saes import load_saes
    from tests.helpers import tiny_config

    corpus = tmp_path / "periodic.jsonl"
    corpus.write_text("".join(json.dumps({"text": "a b c d e f g " * 60}) + "\n" for _ in range(6)))
    folder = tmp_path_factory.mktemp("tied") / "embed-relu"
    make_sae("standard", "blocks.0.hook_resid_pre", seed=5).save_model(str(folder))
    saes = load_saes([SAESource(path=str(folder))], adapter, "cpu", "float32")
    kw = dict(corpus=str(corpus), sae_dirs={"embed-relu": str(folder)}, n_tokens=24 * 32, batch_size=5)
    kw.update(splice_seqs=0, no_steering=True)
    one = tiny_config(str(tmp_path / "one.duckdb"), **kw)
    precompute(one, adapter, saes)
    merge_from_shards(lambda **s: tiny_config(str(tmp_path / "m.duckdb"), **kw, **s), 3, adapter, saes)
    order = "sae, feature, kind, rank"
    a, b = _table(one.db, "examples", order), _table(str(tmp_path / "m.duckdb"), "examples", order)
    q = a[a["kind"] == 1]
    # the data has ties within a feature's sampled examples, or this would test nothing
    assert q.duplicated(["feature", "value"]).sum() > 5
    assert len(a) == len(b) > 0
    for col in ("feature", "kind", "rank", "quantile", "seq", "pos", "ctx_start", "value"):
        assert a[col].tolist() == b[col].tolist(), col


def test_write_connection_memory_is_bounded(tmp_path, monkeypatch):
    """DuckDB's default (80% of the machine) let a Gemma-scale write transaction grow to 19.8 GB of
    24; the write connection holds WRITE_MEMORY (or the environment's) and spills past it."""
    from backend.store import writes

    def limit() -> int:
        with writes.connect_write(tmp_path / "m.duckdb") as con:
            return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    def gib(text: str) -> float:
        n, unit = text.split()
        return float(n) * {"MiB": 2**-10, "GiB": 1, "TiB": 2**10}[unit]

    monkeypatch.delenv(writes.WRITE_MEMORY_ENV, raising=False)
    assert 3.5 < gib(limit()) < 4.0  # DuckDB shows 4GB (10^9 bytes) as 3.7 GiB
    monkeypatch.setenv(writes.WRITE_MEMORY_ENV, "512MB")
    assert 0.4 < gib(limit()) < 0.5
    monkeypatch.setenv(writes.WRITE_MEMORY_ENV, "lots")
    with pytest.raises(UserError, match="SAE_DASHBOARD_WRITE_MEMORY='lots' is not a memory size"):
        limit()
