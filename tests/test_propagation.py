"""Error propagation against an independent recomputation with TransformerLens hooks, shard
merging of its tables, and runs where most of its cells do not apply."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backend.engine.models import hook_depth
from backend.engine.pipeline import precompute
from tests.helpers import make_sae, merge_from_shards
from tests.helpers import query as _df

pytestmark = pytest.mark.integration

# Two families over the tiny model's hooks: ReLU at three depths, TopK at two.
CHAIN = (
    ("relu-pre0", "standard", "blocks.0.hook_resid_pre"),
    ("topk-mid0", "topk", "blocks.0.hook_resid_mid"),
    ("relu-pre1", "standard", "blocks.1.hook_resid_pre"),
    ("relu-post1", "standard", "blocks.1.hook_resid_post"),
    ("topk-post1", "topk", "blocks.1.hook_resid_post"),
)


def _load(tmp_path_factory, adapter, spec):
    from backend.config import SAESource
    from backend.engine.saes import load_saes

    root = tmp_path_factory.mktemp("chain")
    for k, (name, kind, hook) in enumerate(spec):
        make_sae(kind, hook, seed=10 + k).save_model(str(root / name))
    return load_saes([SAESource(path=str(root / n)) for n, _, _ in spec], adapter, "cpu", "float32")


@pytest.fixture(scope="module")
def chain_saes(tmp_path_factory, adapter):
    return _load(tmp_path_factory, adapter, CHAIN)


def _cfg(small_cfg, db, **kw):
    # 12 sequences in batches of 5; the 7-sequence sample spans two batches
    return small_cfg(db=db, n_tokens=12 * 32, batch_size=5, splice_seqs=7, recon_every=1, **kw)


def _brute_force(model, tokens, counted, saes):
    """Every cell from plain TransformerLens runs and sae_lens SAEs loaded afresh from disk."""
    from sae_lens import SAE

    fresh = {s.name: SAE.load_from_disk(s.source) for s in saes}
    fam = {s.name: fresh[s.name].cfg.architecture() for s in saes}
    hook_of = {s.name: s.hook for s in saes}
    m = counted.double()

    def recon(name):
        return lambda x, hook=None: fresh[name].decode(fresh[name].encode(x))

    def sums(x):
        x = x.double()
        return m.sum(), (x.pow(2).sum(-1) * m).sum(), (x * m[..., None]).sum((0, 1))

    def ev_and_rel(name, x):
        err = ((x.double() - recon(name)(x).double()).pow(2).sum(-1) * m).sum()
        n, x2, sx = sums(x)
        return float(1 - err / (x2 - sx.pow(2).sum() / n)), float(err / x2)

    def per_token(hooks):
        with model.hooks(fwd_hooks=hooks):
            return model(tokens, return_type="loss", loss_per_token=True).double()

    def loss(hooks):
        return float(per_token(hooks).mean())

    with torch.no_grad():
        _, clean = model.run_with_cache(tokens)
        clean_loss = loss([])
        resid, recon_rows, output = {}, {}, {}
        for s in saes:
            with model.hooks(fwd_hooks=[(s.hook, recon(s.name))]):
                _, spliced = model.run_with_cache(tokens)
            output[("alone", s.name)] = (clean_loss, loss([(s.hook, recon(s.name))]))
            output[("ablated", s.name)] = (clean_loss, loss([(s.hook, lambda x, hook: torch.zeros_like(x))]))
            output[("random", s.name)] = (
                clean_loss,
                float(np.mean([loss([(s.hook, _noisy(s, fresh[s.name], d))]) for d in range(DRAWS)])),
            )
            for h in sorted(set(hook_of.values()), key=hook_depth):
                if not (h == s.hook or hook_depth(h) > hook_depth(s.hook)):
                    continue
                x = clean[h]
                x_new = recon(s.name)(x) if h == s.hook else spliced[h]
                num = ((x_new.double() - x.double()).pow(2).sum(-1) * m).sum()
                resid[(s.name, h)] = float(num / sums(x)[1])
                for t in saes:
                    if t.hook == h and fam[t.name] == fam[s.name] and t.name != s.name:
                        recon_rows[(s.name, t.name)] = (ev_and_rel(t.name, x), ev_and_rel(t.name, x_new))
        for f in set(fam.values()):
            chain = sorted((s for s in saes if fam[s.name] == f), key=lambda s: hook_depth(s.hook))
            for k, s in enumerate(chain):
                output[("compound", s.name)] = (clean_loss, loss([(c.hook, recon(c.name)) for c in chain[: k + 1]]))
    return resid, recon_rows, output


DRAWS = 2


def _noisy(s, sae, draw, seed=0):
    """The random baseline's rule, written out: at each token, a Gaussian direction drawn from a
    generator seeded by (run seed, SAE, sequence, draw), scaled to the SAE's error norm there."""
    import zlib

    def hook(x, hook=None):
        err = (sae.decode(sae.encode(x)) - x).norm(dim=-1, keepdim=True)
        z = torch.stack(
            [
                torch.randn(
                    x.shape[1:],
                    generator=torch.Generator().manual_seed(zlib.crc32(f"{seed}/{s.name}/{q}/{draw}".encode())),
                )
                for q in range(len(x))
            ]
        )
        return x + err * z / z.norm(dim=-1, keepdim=True)

    return hook


def _by_context(model, tokens, saes):
    """Per SAE and range of tokens seen, (clean, spliced) mean next-token loss, from plain runs."""
    from sae_lens import SAE

    from backend.engine.loss import context_buckets

    out = {}
    with torch.no_grad():
        clean = model(tokens, return_type="loss", loss_per_token=True).double()
        for s in saes:
            sae = SAE.load_from_disk(s.source)
            with model.hooks(fwd_hooks=[(s.hook, lambda x, hook, sae=sae: sae.decode(sae.encode(x)))]):
                spliced = model(tokens, return_type="loss", loss_per_token=True).double()
            for lo, hi in context_buckets(tokens.shape[1]):
                # the loss at position p predicts token p + 1 from p + 1 tokens
                out[(s.name, lo, hi)] = (float(clean[:, lo - 1 : hi].mean()), float(spliced[:, lo - 1 : hi].mean()))
    return out


def test_propagation_matches_transformer_lens_hooks(small_cfg, adapter, chain_saes, tmp_path, monkeypatch):
    from backend.engine.propagation import Propagation

    monkeypatch.setattr(Propagation, "CHUNK", 2)  # the sample's batches go through in chunks: sums still add up
    cfg = _cfg(small_cfg, str(tmp_path / "p.duckdb"))
    precompute(cfg, adapter, chain_saes)
    seqs = _df(cfg.db, "SELECT tokens FROM sequences WHERE seq < 7 ORDER BY seq")
    tokens = torch.tensor(np.stack(seqs["tokens"].to_numpy()), dtype=torch.long)
    counted = ~torch.isin(tokens, torch.tensor(adapter.tokenizer.all_special_ids))
    resid, recon_rows, output = _brute_force(adapter.model, tokens, counted, chain_saes)

    got = _df(cfg.db, "SELECT * FROM propagation")
    assert len(got) == len(resid) == 11  # 5 diagonal cells + the later hooks each SAE reaches
    assert set(got["n_tokens"]) == {int(counted.sum())}
    for r in got.itertuples():
        assert r.resid_change == pytest.approx(resid[(r.sae, r.hook)], rel=1e-4), (r.sae, r.hook)
    # the diagonal is the SAE's own relative error; later hooks carry the error on
    assert (got["resid_change"] > 0).all()

    got = _df(cfg.db, "SELECT * FROM propagation_recon")
    assert (
        set(zip(got["sae"], got["target"]))
        == set(recon_rows)
        == {
            ("relu-pre0", "relu-pre1"),
            ("relu-pre0", "relu-post1"),
            ("relu-pre1", "relu-post1"),
            ("topk-mid0", "topk-post1"),
        }
    )
    for r in got.itertuples():
        (ev_c, rel_c), (ev_s, rel_s) = recon_rows[(r.sae, r.target)]
        assert (r.ev_clean, r.rel_error_clean) == pytest.approx((ev_c, rel_c), rel=1e-4, abs=1e-6)
        assert (r.ev_spliced, r.rel_error_spliced) == pytest.approx((ev_s, rel_s), rel=1e-4, abs=1e-6)
        assert r.ev_spliced != pytest.approx(r.ev_clean, abs=1e-6)  # the splice changed something

    got = _df(cfg.db, "SELECT * FROM splice_output")
    assert set(got["metric"]) == {"ce_loss"} and set(got["n"]) == {7 * 31}
    assert set(zip(got["mode"], got["sae"])) == set(output)
    assert set(got.loc[got["mode"] == "random", "draws"]) == {DRAWS}
    for r in got.itertuples():
        clean, spliced = output[(r.mode, r.sae)]
        assert (r.clean, r.spliced) == pytest.approx((clean, spliced), rel=1e-5), (r.mode, r.sae)
    # the SAEs' errors hurt more than random ones of the same size (these random SAEs' errors are
    # random themselves, so only that the two differ is asserted)
    alone = got[got["mode"] == "alone"].set_index("sae")["spliced"]
    rand = got[got["mode"] == "random"].set_index("sae")["spliced"]
    assert not np.allclose(alone.sort_index(), rand.sort_index())

    ctx = _df(cfg.db, "SELECT * FROM splice_context")
    want = _by_context(adapter.model, tokens, chain_saes)
    assert set(zip(ctx["sae"], ctx["ctx_lo"], ctx["ctx_hi"])) == set(want)
    assert sorted(set(zip(ctx["ctx_lo"], ctx["ctx_hi"]))) == [(1, 16), (17, 31)]
    for r in ctx.itertuples():
        assert (r.clean, r.spliced) == pytest.approx(want[(r.sae, r.ctx_lo, r.ctx_hi)], rel=1e-5)
        assert r.increase == pytest.approx(r.spliced - r.clean, abs=1e-9)

    compound = got[got["mode"] == "compound"].set_index("sae")
    assert compound.loc["relu-post1", "n_spliced"] == 3 and compound.loc["topk-post1", "n_spliced"] == 2

    # the saes table's CE loss recovered is sae_lens's own get_recons_loss on the same sample
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    saes = _df(cfg.db, "SELECT * FROM saes").set_index("sae")
    assert set(saes["downstream_metric"]) == {"ce_loss_recovered"}
    for s in chain_saes:
        with torch.no_grad():
            kw = dict(compute_kl=False, compute_ce_loss=True, hook_name=s.hook)
            r = get_recons_loss(s.sae, adapter.model, ActivationScaler(), tokens, **kw)
        keys = ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation")
        want = [float(r[k].double().mean()) for k in keys]
        row = saes.loc[s.name]
        got_ = [row.downstream_clean, row.downstream_spliced, row.downstream_ablated]
        assert got_ == pytest.approx(want, rel=1e-5), s.name
        value = (want[2] - want[1]) / (want[2] - want[0])
        assert row.downstream_value == pytest.approx(value, rel=1e-4, abs=1e-6), s.name


def test_propagation_shards_merge_to_one_pass(small_cfg, adapter, chain_saes, tmp_path):
    one = _cfg(small_cfg, str(tmp_path / "one.duckdb"))
    precompute(one, adapter, chain_saes)
    merged = _cfg(small_cfg, str(tmp_path / "m.duckdb"))
    merge_from_shards(lambda **kw: _cfg(small_cfg, merged.db, **kw), 3, adapter, chain_saes)
    for table, order in (
        ("propagation", "sae, hook"),
        ("propagation_recon", "sae, target"),
        ("splice_output", "mode, sae"),
    ):
        a, b = (
            _df(one.db, f"SELECT * FROM {table} ORDER BY {order}"),
            _df(merged.db, f"SELECT * FROM {table} ORDER BY {order}"),
        )
        assert len(a) == len(b) > 0, table
        for col in a.columns:
            if pd.api.types.is_numeric_dtype(a[col]):
                # forwards run in float32 on batches of other sizes: equal to float32 rounding
                np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-5, err_msg=col)
            else:
                assert list(a[col]) == list(b[col]), f"{table}.{col}"


def test_one_hook_run_completes_with_what_applies(small_cfg, adapter, tmp_path_factory, tmp_path):
    """Two ReLU SAEs at one hook: each is measured at its own hook (and reads the other's
    perturbed stream there); no later hook, and no compounding chain (two SAEs share a hook)."""
    saes = _load(
        tmp_path_factory,
        adapter,
        (("a", "standard", "blocks.1.hook_resid_pre"), ("b", "standard", "blocks.1.hook_resid_pre")),
    )
    cfg = _cfg(small_cfg, str(tmp_path / "one-hook.duckdb"))
    precompute(cfg, adapter, saes)
    got = _df(cfg.db, "SELECT sae, hook FROM propagation ORDER BY sae")
    assert list(got.itertuples(index=False, name=None)) == [
        ("a", "blocks.1.hook_resid_pre"),
        ("b", "blocks.1.hook_resid_pre"),
    ]
    assert len(_df(cfg.db, "SELECT * FROM propagation_recon")) == 2
    assert set(_df(cfg.db, "SELECT DISTINCT mode FROM splice_output")["mode"]) == {"alone", "ablated", "random"}


def test_no_splice_sample_writes_no_rows(small_cfg, adapter, chain_saes, tmp_path):
    cfg = _cfg(small_cfg, str(tmp_path / "none.duckdb"))
    cfg.splice_seqs = 0
    precompute(cfg, adapter, chain_saes)
    for table in ("propagation", "propagation_recon", "splice_output", "splice_context", "steering"):
        assert _df(cfg.db, f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    assert _df(cfg.db, "SELECT status FROM runs")["status"][0] == "complete"


def test_encoder_splice_equals_a_hooked_hugging_face_forward():
    """The embedded MiniLM path runs layers by hand from a clean hidden state; it must equal the
    library's own forward with the same change made by a forward hook on the layer module."""
    from backend.engine.models import load_model

    adapter = load_model("embedded")
    tokens, _ = adapter.wrap(np.arange(2000, 2000 + 2 * 30).reshape(2, 30))
    hooks = adapter.hook_names()
    clean = adapter.activations(tokens, hooks)
    model = adapter.model
    with torch.no_grad():
        pooled = model(input_ids=tokens).last_hidden_state.mean(1)
        got, out = adapter.spliced_forward(tokens, clean, {}, [])
        torch.testing.assert_close(out, pooled, rtol=1e-5, atol=1e-5)

        def halve(x):
            return x * 0.5

        got, out = adapter.spliced_forward(tokens, clean, {"blocks.1.hook_resid_post": halve}, hooks[2:])
        handle = model.encoder.layer[1].register_forward_hook(
            lambda mod, inp, o: (halve(o[0]), *o[1:]) if isinstance(o, tuple) else halve(o)
        )
        try:
            ref = model(input_ids=tokens, output_hidden_states=True)
        finally:
            handle.remove()
    assert list(got) == hooks[2:]
    # the library records a layer's output before forward hooks change it, so the spliced hook
    # itself is compared with the change applied to the clean state
    torch.testing.assert_close(got[hooks[2]], halve(clean[hooks[2]]))
    for k, h in enumerate(hooks[3:], start=3):
        torch.testing.assert_close(got[h], ref.hidden_states[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref.last_hidden_state.mean(1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, pooled, atol=1e-3)


def test_layers_page_draws_the_propagation(small_cfg, adapter, chain_saes, tmp_path, monkeypatch):
    from tests.helpers import app_runner

    d = tmp_path / "data"
    d.mkdir()
    precompute(_cfg(small_cfg, str(d / "chain.duckdb")), adapter, chain_saes)
    run = app_runner(d, monkeypatch)
    for spread in ("resid", "ev_drop", "output"):
        at = run("pages/6_Layers.py", spread=spread)
        assert not at.exception and not at.error, (spread, at.exception, at.error)
        charts = [c.proto.spec for c in at.get("plotly_chart")]
        heat = next(c for c in charts if "measured at hook" in c)
        compound = next(c for c in charts if "all up to here" in c)
        # every value is a link to the spliced SAE's Layer page, in this database
        assert "Layer?db=chain.duckdb&sae=relu-pre0" in heat and "heatmap" in heat
        assert "all up to here" in compound
        captions = " ".join(c.value for c in at.caption)
        assert "of 7 sequences (--splice-seqs), the first ones" in captions
    at = run("pages/6_Layers.py", spread="resid")
    text = " ".join(m.value for m in at.markdown)
    assert "Which SAE hurts later layers most" in text
    # one part of the page at a time: a part's own parameter opens it, `part` chooses
    assert at.radio(key="w_part").value == "travel"
    heads = [h.value for h in at.subheader]
    assert "The model's own loss with each SAE spliced in" not in heads
    # the performance claims, each stated from this run's numbers
    at = run("pages/6_Layers.py")
    assert at.radio(key="w_part").value == "loss"
    text = " ".join(m.value for m in at.markdown)
    heads = [h.value for h in at.subheader]
    assert "The model's own loss with each SAE spliced in" in heads and "Loss increase by context length" in heads
    assert "How an SAE's error travels through the model" not in heads
    assert "SAEs' reconstruction errors raise the loss more than random directions" in text
    assert "in the shortest contexts (1–16)" in text and "in the longest contexts (17–31)" in text
    loss_table = at.dataframe[0].value
    assert set(loss_table["sae"]) == {n for n, _, _ in CHAIN}
    # the ratio stands where random errors raise the loss, and is blank where they lower it
    rises = loss_table["random_increase"] > 0
    assert loss_table["ratio"][rises].notna().all() and loss_table["ratio"][~rises].isna().all()
    charts = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "context (tokens)" in charts
    at = run("pages/6_Layers.py", part="steering")
    heads = [h.value for h in at.subheader]
    assert heads == ["Steering every feature: which hurt the model, which help"]
    assert "steering at +1 raises the loss for" in " ".join(m.value for m in at.markdown)
    assert "violin" in " ".join(c.proto.spec for c in at.get("plotly_chart"))
    at = run("pages/6_Layers.py", steer_sae="relu-pre1")
    assert not at.exception and not at.error
    assert at.radio(key="w_part").value == "steering"
    assert at.selectbox(key="w_steer_sae").value == "relu-pre1"
    at = run("pages/6_Layers.py", part="sideways")
    assert "part='sideways'" in at.error[0].value
    at = run("pages/6_Layers.py", spread="sideways")
    assert "spread='sideways'" in at.error[0].value


def test_layers_page_says_why_without_a_splice_sample(small_cfg, adapter, chain_saes, tmp_path, monkeypatch):
    from tests.helpers import app_runner

    d = tmp_path / "data"
    d.mkdir()
    cfg = _cfg(small_cfg, str(d / "none.duckdb"))
    cfg.splice_seqs = 0
    precompute(cfg, adapter, chain_saes)
    at = app_runner(d, monkeypatch)("pages/6_Layers.py")
    assert not at.exception and not at.error
    assert any("--splice-seqs" in i.value for i in at.info)


def test_appended_groups_propagate_within_their_group(small_cfg, adapter, chain_saes, tmp_path, monkeypatch):
    """A suite built in two groups (--append) measures propagation between SAEs of one group only,
    with the same numbers one pass gives for those pairs, and the Across layers page says which
    SAEs were measured together."""
    from backend.config import SAESource
    from tests.helpers import app_runner

    d = tmp_path / "data"
    d.mkdir()
    srcs = [SAESource(path=s.source) for s in chain_saes]
    one = _cfg(small_cfg, str(tmp_path / "one.duckdb"), saes=srcs)
    precompute(one, adapter, chain_saes)
    db = str(d / "groups.duckdb")
    precompute(_cfg(small_cfg, db, saes=srcs[:2]), adapter, chain_saes[:2])
    precompute(_cfg(small_cfg, db, saes=srcs[2:], append=True), adapter, chain_saes[2:])

    group = {s.name: int(k >= 2) for k, s in enumerate(chain_saes)}
    at_hook = {s.hook: group[s.name] for s in chain_saes}
    sql = "SELECT sae, hook, resid_change FROM propagation ORDER BY sae, hook"
    a, b = _df(one.db, sql), _df(db, sql)
    assert {group[s] for s in b["sae"]} == {0, 1}
    assert all(at_hook[h] == group[s] for s, h in zip(b["sae"], b["hook"]))  # within a group only
    crossing = [group[s] != at_hook[h] for s, h in zip(a["sae"], a["hook"])]
    assert any(crossing)  # one pass measured pairs across the groups' boundary, which b leaves out
    same = a[[not c for c in crossing]].reset_index(drop=True)
    assert list(same["sae"] + same["hook"]) == list(b["sae"] + b["hook"])
    np.testing.assert_allclose(same["resid_change"], b["resid_change"], rtol=1e-9)

    at = app_runner(d, monkeypatch)("pages/6_Layers.py", spread="resid")
    assert not at.exception and not at.error
    text = " ".join(m.value for m in at.markdown)
    assert "Measured together" in text
    assert "group 0: relu-pre0, topk-mid0; group 1: relu-pre1, relu-post1, topk-post1" in text.replace("\\", "")
