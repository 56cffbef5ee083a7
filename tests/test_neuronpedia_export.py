"""The Neuronpedia export against a stand-in of Neuronpedia's own database and importer
(tests/neuronpedia_replica.py): two models sharing a source id, re-exports, an encoder, the
per-file size, and the names that are foreign keys there."""

from __future__ import annotations

import gzip
import json
import shutil

import duckdb
import pytest

from backend.errors import UserError
from backend.explanations import neuronpedia_export
from backend.explanations.formats import import_explanations
from tests import neuronpedia_replica as np_db
from tests.helpers import run_backend

pytestmark = pytest.mark.integration


@pytest.fixture()
def neuronpedia(postgres):
    import psycopg

    con = psycopg.connect(postgres.new_database(), autocommit=True)
    np_db.create(con)
    yield con
    con.close()


@pytest.fixture()
def two_dbs(tmp_path, tiny_db):
    """Two feature databases (standing for two models) with delphi explanations of relu-b0."""
    from tests.test_explanations import _delphi_run

    out = []
    for name in ("a.duckdb", "b.duckdb"):
        db = tmp_path / name
        shutil.copy(tiny_db, db)
        import_explanations(_delphi_run(tmp_path / f"run-{name}"), str(db), "relu-b0", str(tmp_path / "e.sqlite"))
        out.append(str(db))
    return out


def _export(db, out, model, **kw):
    return neuronpedia_export.export(
        db, "relu-b0", str(out), model, "0-res-tiny", np_db.BOT, str(out.parent / "e.sqlite"),
        human={3: "opening brackets, by a person"}, **kw,
    )  # fmt: skip


def test_two_models_with_one_source_id_import_without_a_row_lost(neuronpedia, two_dbs, tmp_path):
    counts = [_export(db, tmp_path / f"out-{i}", f"model-{i}") for i, db in enumerate(two_dbs)]
    for i, c in enumerate(counts):
        got = np_db.load(neuronpedia, tmp_path / f"out-{i}")
        assert got["Model"] == got["SourceSet"] == got["Source"] == (1, 1)
        assert got["Neuron"] == (c["features"], c["features"])
        assert got["Activation"] == (c["activations"], c["activations"]) and c["activations"] > 100
        assert got["Explanation"] == (c["explanations"], c["explanations"]) == (4, 4)
    n = neuronpedia.execute('SELECT count(*), count(DISTINCT "modelId") FROM "Activation"').fetchone()
    assert n == (counts[0]["activations"] + counts[1]["activations"], 2)
    # delphi's scores ride along: detection in scoreV1, fuzz in scoreV2; the person's has none
    rows = dict(
        neuronpedia.execute(
            'SELECT description, "scoreV1" FROM "Explanation" WHERE "modelId" = %s', ["model-0"]
        ).fetchall()
    )
    assert (
        rows["opening parentheses"] == pytest.approx((2 / 2 + 1 / 2) / 2) and rows["opening brackets, by a person"] == 0
    )
    # a re-export has the same ids: importing it again adds nothing, and loses nothing
    _export(two_dbs[0], tmp_path / "again", "model-0")
    again = np_db.load(neuronpedia, tmp_path / "again")
    assert again["Activation"] == (counts[0]["activations"], 0) and again["Explanation"] == (4, 0)


def test_explanation_names_are_left_empty_unless_the_instance_has_them(neuronpedia, two_dbs, tmp_path):
    _export(two_dbs[0], tmp_path / "named", "m", explanation_type="oai_token-act-pair", explanation_model="gpt-4o-mini")
    import psycopg

    with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a stock instance before its config sync
        np_db.load(neuronpedia, tmp_path / "named")
    neuronpedia.execute("""INSERT INTO "ExplanationType" VALUES ('oai_token-act-pair')""")
    neuronpedia.execute("""INSERT INTO "ExplanationModelType" VALUES ('gpt-4o-mini')""")
    assert np_db.load(neuronpedia, tmp_path / "named")["Explanation"] == (4, 4)
    r = run_backend("explanations", "export", str(tmp_path / "x"), "--db", two_dbs[0], "--sae", "relu-b0",
                    "--model-id", "m", "--source-id", "0-res")  # fmt: skip
    assert r.returncode == 2 and "--author" in r.stderr and np_db.BOT in r.stderr


def test_an_encoders_effects_are_not_written_as_logits(neuronpedia, two_dbs, tmp_path):
    from backend.store import queries

    queries.clear_caches()  # the dashboard's read connection lets go, as it does after 3 s
    con = duckdb.connect(two_dbs[0])
    con.execute("UPDATE saes SET effect_kind = 'embed'")
    con.close()
    _export(two_dbs[0], tmp_path / "enc", "enc")
    with gzip.open(tmp_path / "enc" / "features" / "batch-0.jsonl.gz", "rt") as fh:
        first = json.loads(fh.readline())
    assert not {"pos_str", "neg_str", "pos_values", "neg_values"} & set(first)
    assert "no logits" in json.loads((tmp_path / "enc" / "sourceset.jsonl").read_text())["description"]
    got = np_db.load(neuronpedia, tmp_path / "enc")
    assert got["Neuron"][0] == got["Neuron"][1] > 0


def test_files_stay_under_the_size_one_importer_string_holds(neuronpedia, two_dbs, tmp_path, monkeypatch):
    monkeypatch.setattr(neuronpedia_export, "MAX_FILE_CHARS", 12_000)
    counts = _export(two_dbs[0], tmp_path / "small", "small")
    files = sorted((tmp_path / "small" / "activations").glob("*.jsonl.gz"))
    assert len(files) > 3
    assert all(len(gzip.decompress(f.read_bytes()).decode()) <= 12_000 for f in files)
    assert np_db.load(neuronpedia, tmp_path / "small")["Activation"] == (counts["activations"],) * 2
    monkeypatch.setattr(neuronpedia_export, "FEATURES_PER_BATCH", 16)
    monkeypatch.setattr(neuronpedia_export, "MAX_FILE_CHARS", 256 * 2**20)
    _export(two_dbs[0], tmp_path / "batched", "batched")
    names = sorted(p.name for p in (tmp_path / "batched" / "features").iterdir())
    assert names == [f"batch-{i}.jsonl.gz" for i in range(4)]  # 64 features, 16 a file
    with pytest.raises(UserError, match="names like"):
        _export(two_dbs[0], tmp_path / "bad", "a/b")
