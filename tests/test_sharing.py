"""A shared server against a careless or hostile collaborator: the password guards every write
path, user text never renders as markdown, faults in the data folder and the labels store are
messages, and the app lets go of a database a precompute wants to write."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from backend import labels
from backend.labels.access import Throttle
from backend.store import queries
from tests.helpers import queued, repo_root, run_backend

pytestmark = pytest.mark.integration

EVIL_MD = "![p](http://127.0.0.1:8699/p.png) [click](http://127.0.0.1:8699/x) <img src=x onerror=alert(1)>"


def _no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _stored(data_dir) -> int:
    return len(labels.all_labels(data_dir / "labels.sqlite"))


# ---- the password guards every write path ----


def test_password_guards_the_feature_form(app, data_dir, monkeypatch):
    monkeypatch.setenv("SAE_DASHBOARD_PASSWORD", "pässwört")
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    _no_traceback(at)
    assert not [b for b in at.button if b.key and b.key.startswith("feat_label_")]
    at.text_input(key="w_pw").input("wrong").run()
    assert any("Wrong password" in e.value for e in at.error)
    time.sleep(Throttle().delay(1))  # the server compares this address's next guess no sooner
    at.text_input(key="w_pw").input("pässwört").run()  # non-ASCII: compared as UTF-8 bytes
    _no_traceback(at)
    at.button(key="feat_label_interpretable").click().run()
    _no_traceback(at)
    assert _stored(data_dir) == 1


def test_password_guards_the_queue(app, data_dir, monkeypatch):
    monkeypatch.setenv("SAE_DASHBOARD_PASSWORD", "s3cret")
    at = app("pages/4_Label_queue.py", sae="relu-b0", labeler="ann")
    assert any("requires a password" in i.value for i in at.info)
    assert not [b for b in at.button if b.key and b.key.startswith("queue_")]
    at.text_input(key="w_pw").input("s3cret").run()
    _, key = queued(at)
    at.button(key=f"{key}_unsure").click().run()
    _no_traceback(at)
    assert _stored(data_dir) == 1


def test_password_guards_the_import(app, data_dir, monkeypatch):
    monkeypatch.setenv("SAE_DASHBOARD_PASSWORD", "s3cret")
    at = app("pages/5_Interpretability.py")
    _no_traceback(at)
    assert any("needs the labeling password" in c.value for c in at.caption)
    assert len(at.get("file_uploader")) == 0  # no way to upload before the password
    at.text_input(key="w_pw_import").input("s3cret").run()
    assert len(at.get("file_uploader")) == 1
    monkeypatch.delenv("SAE_DASHBOARD_PASSWORD")
    at = app("pages/5_Interpretability.py")
    assert len(at.get("file_uploader")) == 1  # open server: open import, as the notice says


# ---- user text is text ----


@pytest.mark.parametrize(
    "page, params",
    [
        ("pages/2_Feature.py", {"sae": "relu-b0", "feature": EVIL_MD}),
        ("pages/1_Layer.py", {"sae": EVIL_MD}),
        ("pages/1_Layer.py", {"sae": "relu-b0", "filter": EVIL_MD}),
        ("pages/1_Layer.py", {"sae": "relu-b0", "sort": EVIL_MD}),
        ("pages/1_Layer.py", {"sae": "relu-b0", "lo": EVIL_MD}),
        ("pages/4_Label_queue.py", {"sae": "relu-b0", "mode": EVIL_MD}),
        ("app.py", {"db": EVIL_MD}),
        ("app.py", {"view": EVIL_MD}),
    ],
)
def test_url_parameters_in_messages_are_escaped(app, page, params):
    at = app(page, **params)
    _no_traceback(at)
    shown = " ".join(e.value for e in at.error)
    assert shown, "a bad parameter gives a message"
    assert "![p](" not in shown and "[click](" not in shown and not re.search(r"(?<!\\)<img", shown)
    assert r"\!\[p\]\(" in shown or r"\[click\]" in shown or r"\<img" in shown


def test_labeler_names_are_escaped_in_metrics(app, data_dir):
    run_id = queries.saes(str(data_dir / "tiny.duckdb"))["run_id"].iloc[0]
    for who in ("ann", EVIL_MD[:60]):
        labels.add(
            data_dir / "labels.sqlite",
            labels.Label(db="tiny.duckdb", run_id=run_id, sae="relu-b0", feature=5, verdict="unsure", labeler=who),
        )
    at = app("pages/5_Interpretability.py")
    _no_traceback(at)
    label = next(m.label for m in at.metric if m.label.startswith("Cohen"))
    assert "![p](" not in label and r"\!\[p\]" in label


# ---- faults: URL sizes, the data folder, the labels store ----


def test_huge_numbers_and_long_parameters_are_refused(app):
    at = app("pages/4_Label_queue.py", sae="relu-b0", labeler="ann", step=str(2**32 + 5))
    _no_traceback(at)
    assert any("out of range" in e.value for e in at.error)
    t = time.perf_counter()
    at = app("pages/3_Search.py", q="x" * 100_000)
    _no_traceback(at)
    assert any("the limit is" in e.value for e in at.error)
    assert time.perf_counter() - t < 5


def test_junk_database_is_never_the_default(app, data_dir):
    time.sleep(0.01)
    (data_dir / "zz-junk.duckdb").write_bytes(b"not a database at all" * 50)
    import duckdb

    con = duckdb.connect(str(data_dir / "other.duckdb"))
    con.execute("CREATE TABLE saes (x INTEGER)")  # DuckDB would resolve a missing table to a Python name
    con.close()
    assert queries.list_databases() == ["tiny.duckdb"]
    at = app()
    _no_traceback(at)
    assert not at.error
    assert at.query_params["db"] in ("tiny.duckdb", ["tiny.duckdb"])
    for bad in ("zz-junk.duckdb", "other.duckdb"):
        at = app("pages/1_Layer.py", db=bad)
        _no_traceback(at)
        assert any("not a feature database" in e.value for e in at.error)
        back = [str(el.proto) for el in at.main if "Back to the overview" in str(getattr(el, "proto", ""))]
        assert back and bad not in back[0]  # the way back does not repeat the failing database
    r = run_backend("info", str(data_dir / "other.duckdb"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a feature database" in r.stderr


def test_broken_labels_store_leaves_pages_working(app, data_dir):
    (data_dir / "labels.sqlite").write_bytes(b"garbage, not SQLite" * 100)
    for page, params in (
        ("app.py", {}),
        ("pages/1_Layer.py", {"sae": "relu-b0"}),
        ("pages/2_Feature.py", {"sae": "relu-b0", "feature": "3"}),
        ("pages/5_Interpretability.py", {}),
    ):
        at = app(page, **params)
        _no_traceback(at)
        assert not at.error, (page, [e.value for e in at.error])
        assert any("Labels are unavailable" in w.value for w in at.warning), page
    at = app("pages/1_Layer.py", sae="relu-b0")
    assert len(at.dataframe[0].value) == 64  # the table still shows, without labels


def test_lost_labels_store_is_reported_not_recreated(app, data_dir):
    store = data_dir / "labels.sqlite"
    labels.add(
        store, labels.Label(db="tiny.duckdb", run_id="r", sae="relu-b0", feature=1, verdict="unsure", labeler="a")
    )
    for p in data_dir.glob("labels.sqlite*"):
        p.unlink()
    at = app("pages/2_Feature.py", sae="relu-b0", feature="1", labeler="ann")
    _no_traceback(at)
    assert any("was created here before" in w.value for w in at.warning)
    at.button(key="feat_label_interpretable").click().run()
    assert any("Not saved" in e.value for e in at.error)
    assert not store.exists()


def test_failed_save_keeps_what_was_typed(app, data_dir, monkeypatch):
    blocker = data_dir / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("SAE_DASHBOARD_LABELS", str(blocker / "labels.sqlite"))
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    at.text_input(key="feat_label_desc").input("fires on brackets").run()
    at.button(key="feat_label_interpretable").click().run()
    _no_traceback(at)
    assert any("Not saved" in e.value for e in at.error)
    assert at.text_input(key="feat_label_desc").value == "fires on brackets"


# ---- a precompute into a file the app has open ----

WRITER = """
import sys, time
from backend.store import writes
t = time.monotonic()
with writes.connect_write(sys.argv[1]) as con:
    con.execute("UPDATE runs SET error = 'touched' WHERE true")
print(round(time.monotonic() - t, 2))
"""


@pytest.mark.slow  # a process of its own: seconds
def test_app_lets_go_of_a_database_a_precompute_writes(data_dir):
    db = str(data_dir / "tiny.duckdb")
    queries.clear_caches()
    assert len(queries.features(db, "relu-b0")) == 64  # the read connection is open now
    r = subprocess.run([sys.executable, "-c", WRITER, db], cwd=repo_root(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    waited = float(r.stdout.strip())
    assert waited < queries.IDLE_CLOSE_S + 3
    assert queries.runs(db)["error"].iloc[0] == "touched"  # the change is seen without a restart


def test_the_served_app_does_not_watch_files():
    """Streamlit reads .streamlit/config.toml from the folder it runs in: the repository root, for
    `streamlit run app.py` as the README writes it and for `python -m backend serve`."""
    import tomllib

    cfg = tomllib.loads((repo_root() / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none" and cfg["server"]["runOnSave"] is False
    assert cfg["client"]["showSidebarNavigation"] is False  # ui.common draws the page list
    # that `python -m backend serve` runs there: test_hostile's terminated-server test reads its cwd
