"""Every page through Streamlit's AppTest, with good and bad URL parameters."""

from __future__ import annotations

import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from backend import labels
from backend.density import TOO_FEW_FIRINGS
from backend.labels.access import Throttle
from backend.store import queries
from tests.helpers import app_runner, queued, repo_root

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, corpus_file, build_tiny_db):
    """A data folder with one real (tiny) feature database, whose corpus holds hostile markup."""
    d = tmp_path_factory.mktemp("data")
    evil = d / "evil.jsonl"
    with evil.open("w") as fh:
        fh.write('{"text": "<script>alert(1)</script> <img src=x onerror=alert(2)> and more words"}\n' * 30)
        fh.write(open(corpus_file).read())
    build_tiny_db(str(d / "tiny.duckdb"), str(evil))
    return d


@pytest.fixture()
def app(data_dir, monkeypatch):
    return app_runner(data_dir, monkeypatch)


def _bodies(at: AppTest) -> list[str]:
    """What the page's HTML and markdown elements hold (the examples are markdown's raw HTML)."""
    return [e.proto.body for kind in ("html", "markdown") for e in at.get(kind)]


def _markup(at: AppTest) -> str:
    return "".join(_bodies(at))


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview(app):
    at = app()
    _ok(at)
    assert at.title[0].value == "SAE features: overview"
    assert at.query_params["db"] == ["tiny.duckdb"] or at.query_params["db"] == "tiny.duckdb"
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("log10 feature density" in f for f in specs) and any("explained variance" in f for f in specs)
    # error by position is drawn once, on Across layers (its reconstruction part), linked from here
    assert not any("token position" in f for f in specs)
    links = [el.proto for el in at.main if type(el).__name__ == "PageLink"]
    assert any("part=reconstruction" in p.query_string and "db=tiny.duckdb" in p.query_string for p in links)
    table = at.dataframe[0].value
    # reconstruction is sampled (every 4th batch by default) and the table says on how many tokens
    assert (0 < table["recon_tokens"]).all() and (table["recon_tokens"] < table["n_tokens"]).all()
    assert at.radio(key="w_view").value == "facet"  # 2 SAEs: a panel each
    at = app(view="overlay")
    _ok(at)
    at = app(view="heatmap")
    _ok(at)
    assert any('"heatmap"' in c.proto.spec for c in at.get("plotly_chart"))
    at = app(view="sideways")
    assert "view='sideways'" in at.error[0].value


def test_overview_draws_many_saes_as_heatmap_rows(app, monkeypatch):
    from ui import figures

    monkeypatch.setattr(figures, "FACET_MAX", 1)  # the tiny database's 2 SAEs count as many
    at = app()
    _ok(at)
    assert at.radio(key="w_view").value == "heatmap"
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any('"heatmap"' in f and "log10 feature density" in f for f in specs)


def test_layer_page_filters(app):
    at = app("pages/1_Layer.py", sae="relu-b0")
    _ok(at)
    full = at.dataframe[0].value
    assert len(full) == 64
    at = app("pages/1_Layer.py", sae="relu-b0", filter="dead")
    _ok(at)
    dead = at.dataframe[0].value
    assert len(dead) >= 4 and (dead["count"] == 0).all()
    at = app("pages/1_Layer.py", sae="relu-b0", lo="-1.0", hi="0")
    _ok(at)
    ranged = at.dataframe[0].value
    assert len(ranged) < 64 and (ranged["log10_density"] >= -1.0).all()
    # sorted by density descending by default
    assert list(ranged["density"]) == sorted(ranged["density"], reverse=True)
    at = app("pages/1_Layer.py", sae="relu-b0", overlay="topk-b1")
    _ok(at)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"sae": "nope"}, "no SAE 'nope'"),
        ({"sae": "relu-b0", "filter": "weird"}, "filter='weird'"),
        ({"sae": "relu-b0", "lo": "abc"}, "lo='abc' is not a number"),
        ({"sae": "relu-b0", "lo": "-1", "hi": "-3"}, "range is empty"),
        ({"db": "../secrets.duckdb"}, "is not a database name"),
        ({"db": "missing.duckdb"}, "no database 'missing.duckdb'"),
    ],
)
def test_layer_page_bad_params(app, params, message):
    at = app("pages/1_Layer.py", **params)
    assert not at.exception
    assert message in at.error[0].value


def test_feature_page(app):
    at = app("pages/2_Feature.py", sae="relu-b0", feature="10")
    _ok(at)
    assert at.title[0].value == "Feature 10 · relu-b0"
    html = _markup(at)
    assert 'class="tok"' in html
    # navigation buttons move through features and keep the URL in step, drawing the page once
    runs = at.session_state["_run"]
    at.button(key="nav_next →").click().run()
    _ok(at)
    assert at.query_params["feature"] in (["11"], "11")
    assert at.title[0].value == "Feature 11 · relu-b0"
    assert at.session_state["_run"] == runs + 1


@pytest.mark.parametrize(
    "params, message",
    [
        ({"sae": "relu-b0", "feature": "abc"}, "not a whole number"),
        ({"sae": "relu-b0", "feature": "64"}, "out of range"),
        ({"sae": "relu-b0", "feature": "-1"}, "out of range"),
        ({"db": "..", "feature": "1"}, "is not a database name"),
    ],
)
def test_feature_page_bad_params(app, params, message):
    at = app("pages/2_Feature.py", **params)
    assert not at.exception
    assert message in at.error[0].value


def test_hostile_corpus_text_is_escaped(app, data_dir):
    hits = queries.search(str(data_dir / "tiny.duckdb"), "<script>", None)
    assert len(hits), "the hostile text should be in some top example"
    s, f = hits.iloc[0]["sae"], int(hits.iloc[0]["feature"])
    at = app("pages/2_Feature.py", sae=s, feature=str(f))
    _ok(at)
    html = _markup(at)
    assert "<script" not in html and "<img" not in html
    assert "&lt;" in html


def test_search_page(app):
    at = app("pages/3_Search.py", q="alert")
    _ok(at)
    assert len(at.dataframe[0].value) > 0
    at = app("pages/3_Search.py", q="zzqqxx-not-there")
    _ok(at)
    assert len(at.dataframe[0].value) == 0


def test_label_queue_and_feature_label(app, data_dir):
    at = app("pages/4_Label_queue.py", sae="relu-b0", labeler="ann")
    _ok(at)
    qf, key = queued(at)
    # blind: no density in the page before the verdict
    assert not any("Density was" in s.value for s in at.success)
    at.button(key=f"{key}_interpretable").click().run()
    _ok(at)
    assert any("Density was" in s.value for s in at.success)
    saved = labels.latest(str(data_dir / "labels.sqlite"), "tiny.duckdb")
    assert ((saved["feature"] == qf) & (saved["labeler"] == "ann") & (saved["verdict"] == "interpretable")).any()
    at.button(key="next").click().run()
    _ok(at)
    assert queued(at)[0] != qf
    # the label shows on the feature page and in the layer table
    at = app("pages/2_Feature.py", sae="relu-b0", feature=str(qf), labeler="ann")
    _ok(at)
    assert any("<b>Label:</b> interpretable" in h.proto.body for h in at.get("html"))
    at = app("pages/1_Layer.py", sae="relu-b0")
    table = at.dataframe[0].value
    assert table.set_index("feature").loc[qf, "label"] == "interpretable"


def test_label_queue_needs_name_and_password(app, monkeypatch):
    at = app("pages/4_Label_queue.py", sae="relu-b0")
    _ok(at)
    assert any("Enter your name" in i.value for i in at.info)
    monkeypatch.setenv("SAE_DASHBOARD_PASSWORD", "s3cret")
    at = app("pages/4_Label_queue.py", sae="relu-b0", labeler="ann")
    assert any("requires a password" in i.value for i in at.info)
    at.text_input(key="w_pw").input("wrong").run()
    assert any("Wrong password" in e.value for e in at.error)
    time.sleep(Throttle().delay(1))  # the server compares this address's next guess no sooner
    at.text_input(key="w_pw").input("s3cret").run()
    assert not at.error


def test_interpretability_page(app, data_dir):
    lp = str(data_dir / "labels.sqlite")
    run_id = queries.saes(str(data_dir / "tiny.duckdb"))["run_id"].iloc[0]
    for who, verdicts in (
        ("ann", ["interpretable", "not interpretable", "interpretable"]),
        ("bob", ["interpretable", "interpretable", "interpretable"]),
    ):
        for f, v in zip((20, 21, 22), verdicts):
            labels.add(
                lp,
                labels.Label(
                    db="tiny.duckdb",
                    run_id=run_id,
                    sae="relu-b0",
                    feature=f,
                    verdict=v,
                    labeler=who,
                    description="<b>bold</b> claim",
                ),
            )
    at = app("pages/5_Interpretability.py")
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["features with ≥2 labelers"] == "3"
    assert metrics["percent agreement"] == "67%"
    assert len(at.dataframe) >= 2
    at = app("pages/2_Feature.py", sae="relu-b0", feature="21")
    html = _markup(at)
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    at = app()
    _ok(at)
    assert any("current verdicts" in c.value for c in at.caption)


def test_no_database_is_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_DASHBOARD_DATA", str(tmp_path))
    at = AppTest.from_file(str(repo_root() / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert "python -m backend demo" in at.error[0].value


def test_search_twice_uses_the_cache_without_breaking_it(app):
    """The same search from two sessions: the second gets the cached result; the page must not
    change that shared frame (it did, and the second open failed with 'cannot insert open')."""
    first = app("pages/3_Search.py", q="alert")
    _ok(first)
    second = app("pages/3_Search.py", q="alert")
    _ok(second)
    assert list(first.dataframe[0].value["feature"]) == list(second.dataframe[0].value["feature"])


def test_agreement_queue_never_shows_a_feature_nobody_labeled(app, data_dir):
    lp = str(data_dir / "labels.sqlite")
    run_id = queries.saes(str(data_dir / "tiny.duckdb"))["run_id"].iloc[0]
    feats = queries.features(str(data_dir / "tiny.duckdb"), "topk-b1")
    live = [int(f) for f in feats[feats["count"] > 0]["feature"]]
    live = [int(f) for f in feats[feats["count"] >= TOO_FEW_FIRINGS]["feature"]]
    labeled_by_bob = live[-3:]
    for f in labeled_by_bob:
        labels.add(
            lp,
            labels.Label(db="tiny.duckdb", run_id=run_id, sae="topk-b1", feature=f, verdict="unsure", labeler="bob"),
        )
    at = app("pages/4_Label_queue.py", sae="topk-b1", labeler="cat")
    _ok(at)
    at.radio(key="w_mode").set_value("agreement").run()
    _ok(at)
    assert queued(at)[0] in labeled_by_bob  # switched at once, without pressing Skip


def test_links_never_carry_the_labeler(app):
    from urllib.parse import parse_qs, urlsplit

    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    _ok(at)
    assert "labeler" not in at.query_params
    assert not at.code  # the link box is drawn only when opened (its copy button's script is 1.5 MB)
    at.session_state["w_link_open"] = True
    at.run()
    code = [c.value for c in at.code]
    assert code and all("labeler" not in parse_qs(urlsplit(c).query) for c in code)
    at2 = AppTest.from_file(str(repo_root() / "app.py"), default_timeout=60)
    at2.switch_page("pages/2_Feature.py")
    at2.query_params.update({"db": "tiny.duckdb", "sae": "relu-b0", "feature": "3", "labeler": "mallory"})
    at2.run()
    assert "labeler" not in at2.query_params  # an old link's name is dropped, never used
    assert not at2.text_input(key="w_labeler").value


def test_examples_show_value_position_and_uncounted_tokens(app, data_dir):
    import duckdb

    con = duckdb.connect(str(data_dir / "tiny.duckdb"), read_only=True)
    f = con.execute(
        """SELECT e.feature FROM examples e JOIN sequences s ON s.seq = e.seq
           JOIN vocab v ON v.run_id = s.run_id AND v.special
           WHERE e.sae = 'relu-b0' AND e.kind = 0
             AND list_contains(list_slice(s.tokens, e.ctx_start + 1, e.ctx_start + len(e.acts)), v.token_id)
           LIMIT 1"""
    ).fetchone()[0]
    con.close()
    at = app("pages/2_Feature.py", sae="relu-b0", feature=str(f))
    _ok(at)
    html = _markup(at)
    assert 'class="tok excluded"' in html and "not counted" in html
    assert " at position " in html and 'class="ex"' in html
    at = app("pages/2_Feature.py", sae="relu-b0", feature=str(f), qmode="width")
    _ok(at)
    assert any("of all activations" in c.value for c in at.caption)
    at = app("pages/2_Feature.py", sae="relu-b0", feature=str(f), qmode="sideways")
    assert "qmode='sideways'" in at.error[0].value


def test_queue_hides_the_id_shows_a_fixed_number_of_examples_and_keeps_verdicts_in_reach(app, data_dir):
    at = app("pages/4_Label_queue.py", sae="relu-b0", labeler="ann", qf="5")
    _ok(at)
    f, key = queued(at)
    qf = str(f)
    assert "qf" not in at.query_params  # an old link's feature is dropped, never served
    shown = " ".join(m.value for m in at.markdown)
    assert f"Feature {qf}" not in shown and "Next feature" in shown
    keys = [b.key for b in at.button if b.key and b.key.startswith(key)]
    assert sorted(keys) == sorted(f"{key}_{v}{s}" for v in labels.VERDICTS for s in ("", "_below"))
    named = re.compile(rf"(?<![0-9a-f]){qf}(?![0-9a-f])")
    # keys name no feature: what is left of them past the random token
    assert not any(named.search((w.key or "").replace(key, "queue")) for w in [*at.button, *at.text_input])
    html = _markup(at)
    # every queued feature fired at least TOO_FEW_FIRINGS times: all show the run's n_top (6) examples
    assert html.count('class="ex"') == 6 and "height: 3.2em" not in html
    assert sum("Labeling is open" in c.value for c in at.caption) == 1  # the notice once
    at.button(key=f"{key}_not interpretable_below").click().run()
    _ok(at)
    assert any("Density was" in s.value for s in at.success)
    assert any(f"Feature {qf}" in m.value for m in at.markdown)


def test_layer_firing_threshold(app):
    at = app("pages/1_Layer.py", sae="relu-b0")
    any_counts = at.dataframe[0].value.set_index("feature")["count"]
    at = app("pages/1_Layer.py", sae="relu-b0", fire="10pct")
    _ok(at)
    strict = at.dataframe[0].value.set_index("feature")["count"]
    assert (strict <= any_counts.loc[strict.index]).all() and (strict < any_counts.loc[strict.index]).any()
    assert any("≥ 10% of its max" in m.value for m in at.markdown)
    at = app("pages/1_Layer.py", sae="relu-b0", fire="lots")
    assert "fire='lots'" in at.error[0].value


def test_ultralow_below_the_resolution_floor_is_explained(app):
    at = app("pages/1_Layer.py", sae="relu-b0", filter="ultralow")
    _ok(at)
    assert any("smallest density it can measure" in w.value for w in at.warning)  # 1,240 tokens: floor 8e-4
    table = at.dataframe[0].value
    assert "dense" in table.columns
    at = app("pages/1_Layer.py", sae="relu-b0", filter="dense")
    assert at.dataframe[0].value["dense"].all()


def test_overview_names_itself_and_has_no_duplicate_links(app):
    at = app()
    _ok(at)
    links = [el.proto for el in at.sidebar if type(el).__name__ == "PageLink"]
    assert [p.label for p in links][:1] == ["Overview"]
    assert all("tiny.duckdb" in p.query_string for p in links)  # the database travels with every page
    main_links = [el.proto.label for el in at.main if type(el).__name__ == "PageLink"]
    assert not [x for x in main_links if "relu-b0" in x or "topk-b1" in x]  # no row of one button per SAE


def test_no_emoji_in_the_interface():
    """Debian's Chromium draws emoji as empty boxes; the interface uses text and Material icons."""
    import re

    emoji = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
    for path in [
        repo_root() / "app.py",
        *sorted((repo_root() / "pages").glob("*.py")),
        *sorted((repo_root() / "ui").glob("*.py")),
    ]:
        found = emoji.findall(path.read_text())
        assert not found, f"{path.name}: {found}"


def test_pages_have_no_stray_strings():
    """Streamlit writes every bare string statement of a page script onto the page ("magic"):
    a docstring under a constant would show up as text."""
    import ast

    for path in [repo_root() / "app.py", *sorted((repo_root() / "pages").glob("*.py"))]:
        body = ast.parse(path.read_text()).body
        stray = [n.lineno for n in body[1:] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
        assert not stray, f"{path.name}: bare strings at lines {stray}"


def test_across_layers_page(app, data_dir):
    at = app("pages/6_Layers.py", part="reconstruction")
    _ok(at)
    # the tiny database's SAEs record no training context: the page says how to give one
    assert any("--sae-context" in i.value for i in at.info)
    at = app("pages/6_Layers.py", metric="sideways")
    _ok(at)


def test_across_layers_page_with_a_training_context(tmp_path, corpus_file, sae_dirs, adapter, loaded_saes, monkeypatch):
    from backend.engine.pipeline import precompute
    from tests.helpers import tiny_config

    d = tmp_path / "data"
    d.mkdir()
    precompute(tiny_config(str(d / "ctx.duckdb"), corpus_file, sae_dirs, sae_context=16), adapter, loaded_saes)
    run = app_runner(d, monkeypatch)
    at = run("pages/6_Layers.py", part="reconstruction")
    _ok(at)
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("beyond it" in f and "inside the training context" in f for f in specs)
    at = run("pages/6_Layers.py", metric="rel")
    _ok(at)
    assert at.query_params["metric"] in ("rel", ["rel"])
    at = run("pages/6_Layers.py", metric="sideways")
    assert "metric='sideways'" in at.error[0].value


def test_layer_page_opens_on_the_best_sae_and_labels_read_plainly(app, data_dir):
    saes = queries.saes(str(data_dir / "tiny.duckdb"))
    best = saes.loc[saes["explained_variance"].idxmax(), "sae"]
    assert best != saes["sae"].iloc[0]  # the first in the file is not the best here
    at = app("pages/1_Layer.py")
    _ok(at)
    assert at.query_params["sae"] in (best, [best])
    assert any("reconstructs best" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["label"].map(lambda v: isinstance(v, str)).all()  # never None or NaN
    few = table[(table["count"] > 0) & (table["count"] < TOO_FEW_FIRINGS)]
    assert len(few) and (few["label"] == few["count"].map(lambda n: f"too few firings to judge ({n})")).all()
    often = table[table["count"] >= TOO_FEW_FIRINGS]["label"]
    assert often.isin(["", "interpretable", "not interpretable", "unsure/split"]).all() and (often == "").any()


def test_search_finds_the_teams_own_descriptions_with_who_wrote_them(app, data_dir):
    run_id = queries.saes(str(data_dir / "tiny.duckdb"))["run_id"].iloc[0]
    for who, f, desc in (("ann", 4, "Fires on closing brackets in code"), ("bob", 7, "opening brackets")):
        labels.add(
            data_dir / "labels.sqlite",
            labels.Label("tiny.duckdb", run_id, "relu-b0", f, "interpretable", who, description=desc),
        )
    at = app("pages/3_Search.py", q="brackets CLOSING", **{"in": "explanations"})
    _ok(at)
    found = next(d.value for d in at.dataframe if "labeler" in d.value.columns)
    assert found[["feature", "labeler", "text"]].values.tolist() == [[4, "ann", "Fires on closing brackets in code"]]
    assert found["open"].iloc[0] == "Feature?db=tiny.duckdb&sae=relu-b0&feature=4"


def test_the_feature_pages_verdict_is_in_the_sidebar_beside_the_evidence(app):
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    _ok(at)
    keys = {b.key for b in at.sidebar.button if b.key}
    assert {f"feat_label_{v}" for v in labels.VERDICTS} <= keys  # on the first screen, whatever the scroll
    assert any("Your verdict on feature 3" in m.value for m in at.sidebar.markdown)
    assert not [b for b in at.main.button if b.key and b.key.startswith("feat_label_")]


def test_previous_and_next_walk_the_layer_list_and_back_returns_to_it(app, data_dir):
    from backend.store.feature_lists import ListSpec, count, page

    db = str(data_dir / "tiny.duckdb")
    spec = ListSpec(lo=-2.0, hi=0.0, sort="max_act", ascending=False)
    order = page(db, "relu-b0", spec, 0, 1000)["feature"].tolist()
    assert len(order) >= 3 and order != sorted(order) and count(db, "relu-b0", spec) == len(order)
    params = dict(sae="relu-b0", list="layer", lo="-2.0", hi="0.0", sort="max act ↓")
    at = app("pages/2_Feature.py", feature=str(order[1]), **params)
    _ok(at)
    assert any(f"2 of {len(order)} in the list" in c.value for c in at.caption)
    back = next(str(el.proto) for el in at.main if "back to the list" in str(getattr(el, "proto", "")))
    assert "lo=-2.0" in back and "sort=max" in back and "feature=" not in back and "page=" not in back
    at.button(key="nav_next →").click().run()
    assert at.query_params["feature"] in (str(order[2]), [str(order[2])])
    at.button(key="nav_← previous").click().run()
    at.button(key="nav_← previous").click().run()
    assert at.query_params["feature"] in (str(order[0]), [str(order[0])])
    assert at.button(key="nav_← previous").disabled  # the list's first


def test_the_layer_table_is_paged_and_back_returns_to_the_features_page(app, data_dir):
    """One page of the list goes to the browser; the pages together are the whole list, in order."""
    at = app("pages/1_Layer.py", sae="relu-b0", rows="50")
    _ok(at)
    first = at.dataframe[0].value
    assert len(first) == 50 and list(first["density"]) == sorted(first["density"], reverse=True)
    assert any("Rows 1–50, page 1 of 2" in m.value for m in at.markdown)
    at.number_input(key="w_page").set_value(2).run()
    _ok(at)
    assert at.query_params["page"] in ("2", ["2"])
    second = at.dataframe[0].value
    assert len(second) == 14 and not set(first["feature"]) & set(second["feature"])
    assert second["density"].iloc[0] <= first["density"].iloc[-1]
    # a shared link opens on its page; another preset starts the list again at page 1
    at = app("pages/1_Layer.py", sae="relu-b0", rows="50", page="2")
    assert at.dataframe[0].value["feature"].tolist() == second["feature"].tolist()
    at.selectbox(key="w_sort").set_value("feature").run()
    _ok(at)
    assert "page" not in at.query_params and at.dataframe[0].value["feature"].tolist() == list(range(50))
    # the Feature page's "back" names the page that holds the feature
    f = int(second["feature"].iloc[3])
    at = app("pages/2_Feature.py", sae="relu-b0", feature=str(f), list="layer", rows="50")
    _ok(at)
    assert any("54 of 64 in the list" in c.value for c in at.caption)
    back = next(str(el.proto) for el in at.main if "back to the list" in str(getattr(el, "proto", "")))
    assert "page=2" in back and "rows=50" in back
    for bad, message in (("0", "page=0 is out of range"), ("x", "page='x' is not a whole number")):
        at = app("pages/1_Layer.py", sae="relu-b0", page=bad)
        assert message in at.error[0].value
    at = app("pages/1_Layer.py", sae="relu-b0", rows="7")
    assert "rows=7" in at.error[0].value


def test_architectures_read_as_people_name_them(app):
    at = app()
    _ok(at)
    table = at.dataframe[0].value
    assert set(table["architecture"]) == {"ReLU (L1)", "TopK"}  # sae_lens records "standard" and "topk"


def test_interpretability_leaves_out_features_too_rare_to_judge_and_shows_n(app, data_dir):
    db = str(data_dir / "tiny.duckdb")
    run_id = queries.saes(db)["run_id"].iloc[0]
    feats = queries.features(db, "relu-b0")
    rare = int(feats[(feats["count"] > 0) & (feats["count"] < TOO_FEW_FIRINGS)]["feature"].iloc[0])
    often = int(feats[feats["count"] >= TOO_FEW_FIRINGS]["feature"].iloc[0])
    lp = data_dir / "labels.sqlite"
    for f in (rare, often):
        labels.add(lp, labels.Label("tiny.duckdb", run_id, "relu-b0", f, "interpretable", "zed"))
    at = app("pages/5_Interpretability.py")
    _ok(at)
    left_out = [c.value for c in at.caption if "Left out:" in c.value]
    assert left_out and f"fired fewer than {TOO_FEW_FIRINGS} times" in left_out[0]
    chart = next(c.proto.spec for c in at.get("plotly_chart") if "fraction of features interpretable" in c.proto.spec)
    assert "n=" in chart
    judged = at.dataframe[0].value
    cur = labels.latest(lp, "tiny.duckdb")
    mine = cur[(cur["sae"] == "relu-b0") & (cur["verdict"] != "unsure")]
    counted = set(mine["feature"]) & set(feats[feats["count"] >= TOO_FEW_FIRINGS]["feature"])
    assert rare not in counted and int(judged[judged["sae"] == "relu-b0"]["n"].sum()) <= len(counted)


def test_top_examples_show_distinct_contexts_and_the_exact_top_k_on_request(app, data_dir):
    feats = queries.features(str(data_dir / "tiny.duckdb"), "topk-b1")
    busy = str(int(feats.sort_values("count", ascending=False)["feature"].iloc[0]))

    def rows(**kw):
        at = app("pages/2_Feature.py", sae="topk-b1", feature=busy, qmode="count", **kw)
        _ok(at)
        first = next(b for b in _bodies(at) if 'class="ex"' in b)
        return first.count('class="ex"'), first

    n_contexts, shown = rows()
    n_exact, _ = rows(tops="tokens")
    assert n_exact >= n_contexts and (n_exact == n_contexts or "also fires at" in shown)
    at = app("pages/2_Feature.py", sae="topk-b1", feature=busy, tops="sideways")
    assert "tops='sideways'" in at.error[0].value


def test_an_encoders_token_effects_are_not_shown_as_output_effects(tmp_path, tiny_db, monkeypatch):
    import shutil

    import duckdb

    d = tmp_path / "enc"
    d.mkdir()
    shutil.copy(tiny_db, d / "tiny.duckdb")
    con = duckdb.connect(str(d / "tiny.duckdb"))
    con.execute("UPDATE saes SET effect_kind = 'embed'")  # as an encoder's run records them
    con.close()
    at = app_runner(d, monkeypatch)("pages/2_Feature.py", sae="relu-b0", feature="3")
    _ok(at)
    text = " ".join(m.value for m in [*at.markdown, *at.caption])
    assert "Input tokens nearest its decoder direction" in text and "no effect on output tokens" in text
    assert "promotes" not in text and "Token effects" not in text


@pytest.mark.parametrize(
    "script", ["app.py", "pages/1_Layer.py", "pages/2_Feature.py", "pages/6_Layers.py", "pages/8_Clusters.py"]
)
def test_reading_pages_do_not_import_torch(script):
    """torch takes 1-2 s to import: a fresh server's first Overview, Layer, Feature, Across layers or Clusters page
    must not wait for it (only the live model's panels and the Probe need it, and import it there)."""
    import ast
    import subprocess
    import sys

    tree = ast.parse((repo_root() / script).read_text())
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    mods = {n.module for n in froms} | {f"{n.module}.{a.name}" for n in froms for a in n.names}  # `from ui import x`
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = sorted(m for m in mods if m.split(".")[0] in ("backend", "ui"))
    code = "import importlib, sys\n"
    code += "".join(f"try: importlib.import_module({m!r})\nexcept ModuleNotFoundError: pass\n" for m in ours)
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, check=True)
    assert ours and out.stdout.strip() == "False", (script, ours, out.stdout)
