"""Probe and steer with the live model: activations and steered forwards against independent
recomputations (TransformerLens hooks on the tiny model, Hugging Face forward hooks on MiniLM),
loading from what a database recorded, and the Probe page and Feature page panels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from backend.errors import UserError
from tests.helpers import build_minilm_db, make_sae, save_tiny_gpt2

pytestmark = pytest.mark.integration

TEXT = "The file could not be opened because the path does not exist."


@pytest.fixture(scope="module")
def tiny_live(adapter, loaded_saes):
    from backend.live.model import Live

    return Live(adapter, {s.name: s for s in loaded_saes})


def _tiny_tokens(adapter, text: str = TEXT) -> torch.Tensor:
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([[adapter.tokenizer.bos_token_id, *ids]])


def test_probe_equals_sae_encode_at_the_hook(tiny_live, adapter, loaded_saes):
    from sae_lens import SAE

    from backend.live.probe import probe, top_features

    p = probe(tiny_live, TEXT)
    tokens = _tiny_tokens(adapter)
    assert len(p.tokens) == tokens.shape[1] and not p.counted[0] and p.counted[1:].all()
    _, cache = adapter.model.run_with_cache(tokens)
    for s in loaded_saes:
        want = SAE.load_from_disk(s.source).encode(cache[s.hook])[0].detach().numpy()
        want[0] = 0  # BOS is not counted
        got = np.stack([p.codes[s.name].feature_acts(f, len(p.tokens)) for f in range(s.sae.cfg.d_sae)], 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        top = top_features(p, s.name, "max", n=5)
        np.testing.assert_allclose(top["max"], sorted(want.max(0), reverse=True)[:5], rtol=1e-6)
        by_sum = top_features(p, s.name, "sum", n=3)
        assert by_sum["sum"].iloc[0] == pytest.approx(want.sum(0).max(), rel=1e-5)
        hidden = top_features(p, s.name, "max", n=5, hide={int(top["feature"].iloc[0])})
        assert int(top["feature"].iloc[0]) not in set(hidden["feature"])


def test_steered_forward_adds_the_decoder_direction(tiny_live, adapter, loaded_saes):
    from backend.live.steer import generate, loss_curve, next_token_shift

    s = loaded_saes[0]
    f, max_act, strength = 7, 2.5, -3.0
    v = strength * max_act * s.sae.W_dec[f].detach()
    model = adapter.model
    tokens = _tiny_tokens(adapter)
    with torch.no_grad():
        plain = model(tokens)[0, -1].softmax(-1)
        with model.hooks(fwd_hooks=[(s.hook, lambda x, hook: x + v)]):
            steered = model(tokens)[0, -1].softmax(-1)
            greedy = model.generate(tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    shift = next_token_shift(tiny_live, TEXT, s.name, f, strength, max_act, k=4)
    want = (steered - plain).numpy()
    np.testing.assert_allclose(shift["change"].iloc[:4], np.sort(want)[::-1][:4], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(shift["change"].iloc[4:], np.sort(want)[:4], rtol=1e-4, atol=1e-7)
    assert shift["change"].iloc[0] > 0 > shift["change"].iloc[-1]
    out = generate(tiny_live, TEXT, s.name, f, strength, max_act, n_new=6)
    assert out["greedy"][1] == adapter.tokenizer.decode(greedy[0, tokens.shape[1] :].tolist())
    assert out["greedy"][0] != out["greedy"][1]
    again = generate(tiny_live, TEXT, s.name, f, strength, max_act, n_new=6)
    assert again["sampled"] == out["sampled"]  # a fixed seed

    sample = tokens.repeat(2, 1)
    curve = loss_curve(tiny_live, sample, [0, 1], s.name, f, max_act, strengths=(0.0, strength))
    with torch.no_grad():
        clean = float(model(sample, return_type="loss"))
        with model.hooks(fwd_hooks=[(s.hook, lambda x, hook: x + v)]):
            pushed = float(model(sample, return_type="loss"))
    np.testing.assert_allclose(curve["loss"], [clean, pushed], rtol=1e-5)
    np.testing.assert_allclose(curve["change"], [0.0, pushed - clean], atol=1e-6)


def test_bad_requests_are_messages(tiny_live, loaded_saes):
    from backend.live.probe import probe
    from backend.live.steer import steering_vector

    with pytest.raises(UserError, match="type some text"):
        probe(tiny_live, "   ")
    with pytest.raises(UserError, match="the limit is 511"):
        probe(tiny_live, "word " * 2000)
    name = loaded_saes[0].name
    with pytest.raises(UserError, match="never fired"):
        steering_vector(tiny_live, name, 3, 1.0, 0.0)
    with pytest.raises(UserError, match="does not exist"):
        steering_vector(tiny_live, name, 10**6, 1.0, 1.0)


# ---- the embedded encoder, loaded from what its database recorded ----


@pytest.fixture(scope="module")
def minilm_db(tmp_path_factory):
    """A small database over the embedded MiniLM and one TopK SAE saved in sae_lens's format."""
    root = tmp_path_factory.mktemp("minilm")
    (root / "data").mkdir()
    build_minilm_db(root / "data" / "mini.duckdb", root / "sae-b2")
    return root


def _busiest(root) -> tuple[int, float]:
    import duckdb

    con = duckdb.connect(str(root / "data" / "mini.duckdb"), read_only=True)
    f, max_act = con.execute("SELECT feature, max_act FROM features ORDER BY count DESC LIMIT 1").fetchone()
    con.close()
    return int(f), float(max_act)


def test_encoder_steering_matches_a_hooked_hugging_face_forward(minilm_db):
    from backend.live.model import load_live
    from backend.live.steer import corpus_index, embedding_curve, nearest

    db = str(minilm_db / "data" / "mini.duckdb")
    live = load_live(db, "mini")
    s = live.sae("sae-b2")
    f, max_act = _busiest(minilm_db)
    strengths = (0.0, 2.0, -4.0)
    curve = embedding_curve(live, TEXT, "sae-b2", f, max_act, strengths=strengths)
    model = live.adapter.model
    tokens, _, _ = live.tokenize(TEXT)
    want = []
    with torch.no_grad():
        plain = model(input_ids=tokens).last_hidden_state.mean(1)
        for strength in strengths:
            v = strength * max_act * s.sae.W_dec[f]

            def push(mod, inp, o, v=v):
                return (o[0] + v, *o[1:]) if isinstance(o, tuple) else o + v

            handle = model.encoder.layer[2].register_forward_hook(push)  # blocks.2.hook_resid_post
            try:
                emb = model(input_ids=tokens).last_hidden_state.mean(1)
            finally:
                handle.remove()
            want.append(float(torch.nn.functional.cosine_similarity(emb, plain)[0]))
    np.testing.assert_allclose(curve["cosine"], want, rtol=1e-4, atol=1e-5)
    assert want[0] == pytest.approx(1.0, abs=1e-5) and want[2] < want[1] < 1.0
    index = corpus_index(live, db, "mini", n=16)
    near = nearest(live, index, TEXT, "sae-b2", f, 8.0, max_act)
    assert len(near["plain"]) == 3 and list(near["plain"]["cosine"]) == sorted(near["plain"]["cosine"], reverse=True)


def test_missing_sae_folder_says_how_to_point_at_it(minilm_db, tmp_path, monkeypatch):
    from backend.live.model import SAE_DIR_ENV, load_live

    db = str(minilm_db / "data" / "mini.duckdb")
    moved = tmp_path / "elsewhere"
    shutil.copytree(minilm_db / "sae-b2", moved / "sae-b2")
    shutil.move(str(minilm_db / "sae-b2"), str(tmp_path / "gone"))
    try:
        monkeypatch.delenv(SAE_DIR_ENV, raising=False)
        with pytest.raises(UserError, match=f"does not exist on this server: set {SAE_DIR_ENV}"):
            load_live(db, "mini")
        monkeypatch.setenv(SAE_DIR_ENV, str(moved))
        assert list(load_live(db, "mini").saes) == ["sae-b2"]
    finally:
        shutil.move(str(tmp_path / "gone"), str(minilm_db / "sae-b2"))


# ---- the pages ----


def _ok(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _warned(at, text: str) -> bool:
    return any(text in w.value.replace("\\", "") for w in at.warning)  # messages are markdown-escaped


def test_probe_page(minilm_db, monkeypatch):
    from tests.helpers import app_runner

    run = app_runner(minilm_db / "data", monkeypatch)
    at = run("pages/7_Probe.py")
    _ok(at)
    assert any("The model runs once" in i.value for i in at.info)
    script = "<script>alert(1)</script> The path was not found."
    at = run("pages/7_Probe.py", text=script, sae="sae-b2")
    _ok(at)
    table = at.dataframe[0].value
    assert len(table) > 0 and table["max"].is_monotonic_decreasing
    assert table["open"].iloc[0].startswith("Feature?db=mini.duckdb&sae=sae-b2&feature=")
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "&lt;" in html and "<script" not in html  # user text is text (MiniLM splits "<script>" into tokens)
    first = int(table["feature"].iloc[0])
    assert any(f"Feature {first}, token by token" in h.value for h in at.subheader)
    # the summary over every SAE hides dense features as the table does: its top 3 come from the table
    summary = at.dataframe[1].value.set_index("sae")
    top3 = [int(x.split(" ")[0]) for x in summary.loc["sae-b2", "top 3 by max"].split(", ")]
    assert top3 == [int(x) for x in table["feature"].iloc[: len(top3)]]
    at = run("pages/7_Probe.py", text=script, sae="sae-b2", by="sum", dense="1", feature="5")
    _ok(at)
    assert at.dataframe[0].value["sum"].is_monotonic_decreasing
    assert any("Feature 5, token by token" in h.value for h in at.subheader)
    at = run("pages/7_Probe.py", text="word " * 700, sae="sae-b2")
    assert not at.exception and _warned(at, "the limit is 510")
    at = run("pages/7_Probe.py", text=script, sae="sae-b2", by="sideways")
    assert "by='sideways'" in at.error[0].value


def test_feature_page_tries_text_and_steers(minilm_db, monkeypatch):
    from tests.helpers import app_runner

    f, _ = _busiest(minilm_db)
    run = app_runner(minilm_db / "data", monkeypatch)
    at = run("pages/2_Feature.py", sae="sae-b2", feature=str(f), probe=TEXT, prompt=TEXT, strength="-2")
    _ok(at)
    assert any("the stored max over the corpus" in c.value for c in at.caption)
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("cosine to the unsteered embedding" in s for s in specs)
    assert any("contrastive loss (MNRL)" in s for s in specs)  # the encoder's own loss on the splice sample
    assert any("**Steering sweep**" in m.value for m in at.markdown)
    assert any("Nearest corpus sequences" in m.value for m in at.markdown)
    at = run("pages/2_Feature.py", sae="sae-b2", feature=str(f), prompt=TEXT, strength="lots")
    assert not at.exception and _warned(at, "strength='lots' is not a number")
    assert any("Top activations" in m.value for m in at.markdown)  # the rest of the page still works


def test_pages_say_what_is_missing_and_keep_working(minilm_db, tmp_path, monkeypatch):
    from backend.live.model import SAE_DIR_ENV
    from tests.helpers import app_runner

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(minilm_db / "data" / "mini.duckdb", data / "moved.duckdb")
    shutil.move(str(minilm_db / "sae-b2"), str(tmp_path / "gone"))
    try:
        monkeypatch.delenv(SAE_DIR_ENV, raising=False)
        run = app_runner(data, monkeypatch)
        at = run("pages/7_Probe.py", text=TEXT, sae="sae-b2")
        assert not at.exception and not at.error and _warned(at, SAE_DIR_ENV)
        at = run("pages/2_Feature.py", sae="sae-b2", feature="1", probe=TEXT)
        assert not at.exception and _warned(at, SAE_DIR_ENV)
        assert any("Activation histogram" in m.value for m in at.markdown)  # the rest of the page works
    finally:
        shutil.move(str(tmp_path / "gone"), str(minilm_db / "sae-b2"))


def test_concurrent_requests_queue_and_a_long_wait_is_a_message(adapter, loaded_saes):
    import threading

    from backend.live.model import Limits, Live
    from backend.live.probe import probe

    live = Live(adapter, {s.name: s for s in loaded_saes}, Limits(wait_s=0.2, cache=0))
    texts = [f"{TEXT} number {i}" for i in range(6)]
    alone = {t: probe(Live(adapter, {s.name: s for s in loaded_saes}), t) for t in texts}
    got, errors = {}, []

    def work(t):
        try:
            got[t] = probe(live, t)
        except Exception as e:  # noqa: BLE001 - collected and failed on below
            errors.append(e)

    live.limits = Limits(wait_s=30, cache=0)
    threads = [threading.Thread(target=work, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in texts:
        for name in got[t].codes:
            np.testing.assert_array_equal(got[t].codes[name].value, alone[t].codes[name].value)
    live.limits = Limits(wait_s=0.2, cache=0)
    with live.using():  # another session holds the model
        box = []
        th = threading.Thread(target=lambda: box.append(pytest.raises(UserError, probe, live, TEXT)))
        th.start()
        th.join()
    assert "busy" in str(box[0].value)


def test_feature_page_steers_a_causal_model(tmp_path, tokenizer_dir, corpus_file, monkeypatch):
    """The causal panels end to end: a tiny random GPT-2 saved locally (loaded again through
    sae_lens's Hugging Face path, as the precompute loaded it), greedy and sampled continuations,
    next-token shifts and the loss curve."""
    from backend.config import PrecomputeConfig, SAESource
    from backend.engine.pipeline import precompute
    from tests.helpers import app_runner

    model = save_tiny_gpt2(tmp_path / "gpt", tokenizer_dir)
    make_sae("topk", "transformer.h.0").save_model(str(tmp_path / "sae-h0"))
    data = tmp_path / "data"
    data.mkdir()
    precompute(
        PrecomputeConfig(
            db=str(data / "gpt.duckdb"),
            model=model,
            corpus=corpus_file,
            n_tokens=256,
            context_len=32,
            batch_size=4,
            run_name="gpt",
            saes=[SAESource(path=str(tmp_path / "sae-h0"))],
        )
    )
    import duckdb

    con = duckdb.connect(str(data / "gpt.duckdb"), read_only=True)
    f = con.execute("SELECT feature FROM features WHERE max_act > 0 ORDER BY count DESC LIMIT 1").fetchone()[0]
    con.close()
    run = app_runner(data, monkeypatch)
    at = run("pages/2_Feature.py", sae="sae-h0", feature=str(f), prompt="def open(path):", strength="3")
    _ok(at)
    md = " ".join(m.value for m in at.markdown)
    assert "**greedy** continuation" in md and "**sampled** continuation" in md
    assert "gain and lose the most probability" in md
    assert any("CE loss, nats" in c.proto.spec for c in at.get("plotly_chart"))
    assert any("**Steering sweep**" in m.value and "first-order estimate" in m.value for m in at.markdown)
    # the live curve at +1 and -1 is the stored sweep's exact value
    from backend.live.model import load_live
    from backend.live.steer import loss_curve
    from backend.store import queries

    db = str(data / "gpt.duckdb")
    t = queries.steering(db, "sae-h0")
    row = t[t["exact_plus"].notna()].iloc[0]
    tokens, seqs = queries.splice_sample(db, "gpt")
    curve = loss_curve(
        load_live(db, "gpt"), torch.as_tensor(tokens), seqs, "sae-h0", int(row.feature), row.max_act, (-1.0, 1.0)
    )
    np.testing.assert_allclose(curve["change"], [row.exact_minus, row.exact_plus], rtol=1e-4, atol=1e-6)
    shift = [d.value for d in at.dataframe if "p_steered" in d.value.columns][0]
    assert len(shift) == 16 and shift["change"].iloc[0] >= 0 >= shift["change"].iloc[-1]
