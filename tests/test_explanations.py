"""Explanations in and out: Neuronpedia and delphi files written to their formats, refused whole
when bad, searched with FTS5 ranking, exported in the layout Neuronpedia imports and read back."""

from __future__ import annotations

import gzip
import json

import pytest

from backend.errors import UserError
from backend.explanations import store
from backend.explanations.formats import import_explanations
from tests.helpers import run_backend

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory, build_tiny_db, corpus_file):
    d = tmp_path_factory.mktemp("expl")
    return build_tiny_db(str(d / "tiny.duckdb"), corpus_file)


def _neuronpedia(path, records, gz=True):
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return str(path)


NP = [
    {"modelId": "tiny", "layer": "0-res", "index": "5", "description": "closing brackets in code",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
    {"modelId": "tiny", "layer": "0-res", "index": "7", "description": "the word return",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
]  # fmt: skip


def _delphi(root, module="layers.0"):
    (root / "explanations").mkdir(parents=True)
    (root / "scores" / "detection").mkdir(parents=True)
    (root / "explanations" / f"{module}_latent9.txt").write_text(json.dumps("file paths and directory names"))
    (root / "explanations" / f"{module}_latent11.txt").write_text(json.dumps("numbers in tables"))
    recs = [
        {"str_tokens": ["a"], "activations": [1.0], "distance": 1, "activating": True, "prediction": True,
         "probability": None, "correct": True},
        {"str_tokens": ["b"], "activations": [1.0], "distance": 2, "activating": True, "prediction": False,
         "probability": None, "correct": False},
        {"str_tokens": ["c"], "activations": [0.0], "distance": -1, "activating": False, "prediction": False,
         "probability": None, "correct": True},
        {"str_tokens": ["d"], "activations": [0.0], "distance": -1, "activating": False, "prediction": None,
         "probability": None, "correct": None},
    ]  # fmt: skip
    (root / "scores" / "detection" / f"{module}_latent9.txt").write_text(json.dumps(recs))
    return str(root)


def test_import_both_formats_and_search(tiny_db, tmp_path):
    where = str(tmp_path / "explanations.sqlite")
    assert import_explanations(_neuronpedia(tmp_path / "np.jsonl.gz", NP), tiny_db, "relu-b0", where).explanations == 2
    again = import_explanations(_neuronpedia(tmp_path / "np.jsonl.gz", NP), tiny_db, "relu-b0", where)
    assert (again.explanations, again.scores) == (0, 0)
    assert import_explanations(_delphi(tmp_path / "delphi"), tiny_db, "relu-b0", where).explanations == 2
    rows = store.for_sae(where, "tiny.duckdb", "relu-b0")
    assert sorted(rows["feature"]) == [5, 7, 9, 11]
    got = rows.set_index("feature")
    assert got.loc[5, "source"] == "neuronpedia:gpt-4o-mini" and got.loc[5, "score"] != got.loc[5, "score"]  # NaN
    # delphi's balanced accuracy: positives 1 of 2 right, negatives 1 of 1 (the unparsed one dropped)
    assert got.loc[9, "score"] == pytest.approx((1 / 2 + 1 / 1) / 2) and got.loc[11, "source"] == "delphi"
    hits = store.search(where, "tiny.duckdb", "directory")
    assert list(hits["feature"]) == [9]
    hits = store.search(where, "tiny.duckdb", "bracket code")  # porter stemming; every word must match
    assert list(hits["feature"]) == [5]
    for nasty in ('"', "NEAR(", "a OR", "*", "code -x"):
        store.search(where, "tiny.duckdb", nasty)  # FTS5 syntax is taken as plain words, never an error
    assert store.search(where, "other.duckdb", "directory").empty
    # a JSON array file, and a file of several layers needs --layer
    arr = tmp_path / "np.json"
    arr.write_text(json.dumps([{**NP[0], "index": 6}, {**NP[1], "layer": "1-res"}]))
    with pytest.raises(UserError, match="several layers"):
        import_explanations(str(arr), tiny_db, "relu-b0", where)
    assert import_explanations(str(arr), tiny_db, "relu-b0", where, layer="0-res").explanations == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ([{**NP[0], "index": "999"}, NP[1]], "feature 999 does not exist"),
        ([NP[0], {"index": "3"}], "no 'description' field"),
        ([NP[0], {**NP[1], "index": "x"}], "is not a feature number"),
        ([NP[0], {**NP[1], "description": " "}], "empty description"),
    ],
)
def test_bad_files_are_refused_whole(tiny_db, tmp_path, content, message):
    where = str(tmp_path / "e.sqlite")
    with pytest.raises(UserError, match=message):
        import_explanations(_neuronpedia(tmp_path / "bad.jsonl", content, gz=False), tiny_db, "relu-b0", where)
    assert store.for_sae(where, "tiny.duckdb").empty  # nothing of it was added
    (tmp_path / "broken.jsonl").write_text(json.dumps(NP[0]) + "\n{not json\n")
    with pytest.raises(UserError, match="broken.jsonl:2 is not valid JSON"):
        import_explanations(str(tmp_path / "broken.jsonl"), tiny_db, "relu-b0", where)


def test_export_is_the_layout_neuronpedia_imports_and_reads_back(tiny_db, tmp_path):
    from backend.explanations.neuronpedia_export import export

    where = str(tmp_path / "e.sqlite")
    import_explanations(_delphi(tmp_path / "delphi"), tiny_db, "relu-b0", where)
    out = tmp_path / "np-export"
    counts = export(tiny_db, "relu-b0", str(out), "tiny", "0-res", "me", where, human={5: "brackets, by a person"})
    assert counts["features"] == 64 and counts["explanations"] == 3 and counts["activations"] > 0
    files = {}
    for name in ("features", "activations", "explanations"):
        with gzip.open(out / name / "batch-0.jsonl.gz", "rt") as fh:
            files[name] = [json.loads(line) for line in fh]
        keys = set(files[name][0])
        assert all(set(r) == keys for r in files[name]), f"{name}: every line must carry the first line's keys"
        assert all(
            r["modelId"] == "tiny" and r["layer"] == "0-res" and isinstance(r["index"], str) for r in files[name]
        )
    assert {"creatorId", "maxActApprox", "frac_nonzero", "pos_str", "pos_values"} <= set(files["features"][0])
    for a in files["activations"]:
        assert {"id", "tokens", "values", "maxValue", "maxValueTokenIndex", "minValue", "creatorId"} <= set(a)
        assert len(a["tokens"]) == len(a["values"]) and a["maxValue"] == max(a["values"])
        assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
    assert len({a["id"] for a in files["activations"]}) == len(files["activations"])
    assert {e["description"] for e in files["explanations"]} == {
        "file paths and directory names",
        "numbers in tables",
        "brackets, by a person",
    }
    assert all({"id", "description", "authorId"} <= set(e) for e in files["explanations"])
    # the exported folder reads back as a Neuronpedia export
    again = str(tmp_path / "again.sqlite")
    assert import_explanations(str(out), tiny_db, "relu-b0", again).explanations == 3
    back = store.for_sae(again, "tiny.duckdb", "relu-b0")
    assert sorted(zip(back["feature"], back["text"])) == sorted(
        [(9, "file paths and directory names"), (11, "numbers in tables"), (5, "brackets, by a person")]
    )


def test_cli_import_error_is_one_line(tiny_db, tmp_path):
    bad = _neuronpedia(tmp_path / "bad.jsonl", [{**NP[0], "index": "999"}], gz=False)
    p = run_backend("explanations", "import", bad, "--db", tiny_db, "--sae", "relu-b0", "--store", str(tmp_path / "s"))
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "feature 999" in p.stderr
    assert "Traceback" not in p.stderr
    ok = _neuronpedia(tmp_path / "ok.jsonl", NP, gz=False)
    p = run_backend("explanations", "import", ok, "--db", tiny_db, "--sae", "relu-b0", "--store", str(tmp_path / "s"))
    assert p.returncode == 0 and "imported 2 new explanations" in p.stdout


def test_pages_show_search_and_offer_explanations(tiny_db, tmp_path, monkeypatch):
    import shutil

    from tests.helpers import app_runner

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_db, data / "tiny.duckdb")
    import_explanations(
        _delphi(tmp_path / "delphi"), str(data / "tiny.duckdb"), "relu-b0", str(data / "explanations.sqlite")
    )
    run = app_runner(data, monkeypatch)
    at = run("pages/2_Feature.py", labeler="ann", sae="relu-b0", feature="9")
    assert not at.exception and not at.error
    table = [d.value for d in at.dataframe if "text" in d.value.columns][0]
    assert table["text"].tolist() == ["file paths and directory names"] and table["source"].tolist() == ["delphi"]
    assert at.text_input(key="feat_label_desc").value == "file paths and directory names"  # offered to start from
    at = run("pages/3_Search.py", q="directories", **{"in": "explanations"})
    assert not at.exception and not at.error
    hits = at.dataframe[0].value
    assert hits["feature"].tolist() == [9] and hits["open"].iloc[0] == "Feature?db=tiny.duckdb&sae=relu-b0&feature=9"
    at = run("pages/3_Search.py", q="directories", **{"in": "nowhere"})
    assert "in='nowhere'" in at.error[0].value


def _record(activating: bool, prediction, old: bool = False) -> dict:
    """One per-example record of a delphi classifier score file, in the layout of its era."""
    base = {"str_tokens": ["x"], "activations": [1.0 if activating else 0.0], "distance": 1 if activating else -1}
    if old:  # sae-auto-interp / delphi before February 2025: ground_truth, highlighted, -1 for a failure
        return {
            **base,
            "ground_truth": activating,
            "prediction": -1 if prediction is None else int(prediction),
            "highlighted": False,
            "probability": 0.0,
            "correct": prediction == activating,
        }
    return {**base, "activating": activating, "prediction": prediction, "probability": None,
            "correct": None if prediction is None else prediction == activating}  # fmt: skip


def _delphi_run(root, old: bool = False, scorers=("detection", "fuzz")):
    """A delphi results folder as its CLI writes one: run_config.json, explanations (one of them
    delphi's placeholder), classifier scores per scorer, and a simulation folder of another kind."""
    kind = "feature" if old else "latent"
    module = ".model.layers.0" if old else "layers.0"  # old module names may start with a dot
    (root / "explanations").mkdir(parents=True)
    if not old:
        (root / "run_config.json").write_text(
            json.dumps({"explainer_model": "Qwen/Qwen2.5-7B", "scorers": list(scorers)})
        )
    texts = {3: "opening parentheses", 4: "numbers", 5: "Explanation could not be parsed.", 6: "always on"}
    for i, t in texts.items():
        (root / "explanations" / f"{module}_{kind}{i}.txt").write_text(json.dumps(t))
    T, F = True, False
    records = {
        # latent 3: detection 2/2 positives, 1/2 negatives, one failed prediction left out
        ("detection", 3): [(T, T), (T, T), (F, F), (F, T), (F, None)],
        ("fuzz", 3): [(T, T), (T, F), (F, F), (F, F)],
        ("detection", 4): [(T, F), (T, F), (F, F), (F, F)],
        # latent 6 is active in every window: no negatives, so the missing class adds 0
        ("detection", 6): [(T, T), (T, T), (T, F)],
    }
    for (scorer, i), recs in records.items():
        if scorer not in scorers:
            continue
        d = root / "scores" / scorer
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{module}_{kind}{i}.txt").write_text(json.dumps([_record(a, p, old) for a, p in recs]))
    sim = root / "scores" / "simulation"
    sim.mkdir(parents=True, exist_ok=True)
    (sim / f"{module}_{kind}3.txt").write_text(json.dumps([{"distance": 0, "ev_correlation_score": 0.4}]))
    return str(root)


@pytest.mark.parametrize("old", [False, True])
def test_delphi_scores_per_scorer_as_delphi_computes_them(tiny_db, tmp_path, old):
    where = str(tmp_path / "e.sqlite")
    got = import_explanations(_delphi_run(tmp_path / "run", old), tiny_db, "relu-b0", where)
    assert (got.explanations, got.scores, got.placeholders) == (3, 4, 1)
    assert got.skipped_scorers == ["simulation"]
    rows = store.for_sae(where, "tiny.duckdb", "relu-b0")
    assert "could not be parsed" not in " ".join(rows["text"])
    score = {(r.feature, r.scorer): r.score for r in rows.itertuples() if r.scorer}
    assert score[(3, "detection")] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert score[(3, "fuzz")] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert score[(4, "detection")] == pytest.approx((0 / 2 + 2 / 2) / 2)
    assert score[(6, "detection")] == pytest.approx((2 / 3 + 0) / 2)  # one-sided, as delphi scores it
    assert set(rows["explainer"].dropna()) == (set() if old else {"Qwen/Qwen2.5-7B"})
    wide = store.for_feature(where, "tiny.duckdb", "relu-b0", 3)
    assert list(wide.columns) == ["source", "explainer", "text", "detection", "fuzz"]


def test_a_second_scorer_adds_its_scores_and_a_misspelt_one_is_refused(tiny_db, tmp_path):
    where = str(tmp_path / "e.sqlite")
    run = _delphi_run(tmp_path / "run")
    first = import_explanations(run, tiny_db, "relu-b0", where, scorer="detection")
    assert (first.explanations, first.scores) == (3, 3)
    second = import_explanations(run, tiny_db, "relu-b0", where, scorer="fuzz")
    assert (second.explanations, second.scores) == (0, 1)  # the same explanation, a score it lacked
    assert import_explanations(run, tiny_db, "relu-b0", where).scores == 0  # everything is there
    with pytest.raises(UserError, match="no scores of scorer 'fuz' .it has detection, fuzz, simulation"):
        import_explanations(run, tiny_db, "relu-b0", where, scorer="fuz")
    with pytest.raises(UserError, match="not per-example classifier records"):
        import_explanations(run, tiny_db, "relu-b0", where, scorer="simulation")


def test_a_store_of_the_previous_version_is_read_and_upgraded(tiny_db, tmp_path):
    import sqlite3

    where = tmp_path / "old.sqlite"
    con = sqlite3.connect(where)
    con.executescript(
        "CREATE TABLE explanations (id INTEGER PRIMARY KEY, db TEXT NOT NULL, sae TEXT NOT NULL, "
        "feature INTEGER NOT NULL, source TEXT NOT NULL, text TEXT NOT NULL, score REAL, "
        "UNIQUE (db, sae, feature, source, text));"
        "CREATE VIRTUAL TABLE explanations_fts USING fts5(text, content='explanations', content_rowid='id', "
        "tokenize='porter unicode61');"
        "INSERT INTO explanations (db, sae, feature, source, text, score) "
        "VALUES ('tiny.duckdb', 'relu-b0', 3, 'delphi', 'opening parentheses', 0.75);"
        "INSERT INTO explanations_fts (rowid, text) VALUES (1, 'opening parentheses');"
    )
    con.close()
    rows = store.for_sae(str(where), "tiny.duckdb", "relu-b0")
    assert list(rows["scorer"]) == ["unrecorded"] and list(rows["score"]) == [0.75]
    got = import_explanations(_delphi_run(tmp_path / "run"), tiny_db, "relu-b0", str(where))
    assert (got.explanations, got.scores) == (2, 4)  # latent 3's text was there: only its scores are new
    rows = store.for_sae(str(where), "tiny.duckdb", "relu-b0")
    assert sorted(rows[rows["feature"] == 3]["scorer"]) == ["detection", "fuzz", "unrecorded"]
