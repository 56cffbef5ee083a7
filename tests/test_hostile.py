"""Hostile files and faults: nothing in a data folder, a shard or an import runs code, breaks a
page, renders as markup, or is overwritten. Every crafted file is built here: a read-only or
damaged store, a 0-byte or truncated file, a pickle with a side effect, a markdown-laden database,
a gzip bomb under a memory limit, a full disk (a file size limit)."""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import duckdb
import pandas as pd
import pytest
import torch

from backend import labels
from backend.errors import UserError
from backend.explanations import store as explanations
from backend.store import queries
from tests.helpers import make_sae, repo_root, run_backend, save_tiny_gpt2

pytestmark = pytest.mark.integration

OUTSIDE = "http://127.0.0.1:8699"
EVIL_MD = f"![p]({OUTSIDE}/p.png) [click]({OUTSIDE}/x) <img src=x onerror=alert(1)> <a href='{OUTSIDE}/y'>y</a>"


def _no_traceback(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _label_form(at) -> bool:
    return any(b.key and b.key.startswith("feat_label_") for b in at.button)


def _explanations_store(path: Path, wal: bool) -> None:
    """A store with one explanation of relu-b0's feature 3, as an import of an earlier version
    left it (WAL mode) or as this one writes it."""
    explanations.add(
        str(path),
        pd.DataFrame(
            [
                {
                    "db": "tiny.duckdb",
                    "sae": "relu-b0",
                    "feature": 3,
                    "source": "delphi",
                    "text": "closing brackets",
                    "scorer": "detection",
                    "score": 0.8,
                }
            ]
        ),
    )
    if wal:
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode=WAL")
        con.close()


# ---- 1. an unreadable explanations store ----


def test_an_empty_explanations_store_leaves_the_feature_page_and_search_working(app, data_dir):
    (data_dir / "explanations.sqlite").write_bytes(b"")  # what an import on a full disk left
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    _no_traceback(at)
    assert any("explanations store explanations.sqlite cannot be read" in w.value for w in at.warning)
    assert _label_form(at)
    for q in ("\x00", "brackets"):
        at = app("pages/3_Search.py", **{"in": "explanations", "q": q})
        _no_traceback(at)
        assert not at.error


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_explanations_are_read_from_a_read_only_mount(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _explanations_store(src / "explanations.sqlite", wal=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True).returncode:
        pytest.skip("this machine does not allow a bind mount")
    try:
        rows = explanations.for_feature(str(ro / "explanations.sqlite"), "tiny.duckdb", "relu-b0", 3)
        assert list(rows["text"]) == ["closing brackets"]
        assert sorted(p.name for p in ro.iterdir()) == ["explanations.sqlite"]
    finally:
        subprocess.run(["umount", str(ro)], check=True)


# ---- 2. a shard state that would run code ----


class _SideEffect:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_merging_a_shard_whose_state_runs_code_refuses_it(tmp_path):
    marker = tmp_path / "ran"
    shard = tmp_path / "x.shard-0-of-1"
    shard.mkdir()
    torch.save({"config": {"shard": "0/1"}, "payload": _SideEffect(str(marker))}, shard / "state.pt")
    r = run_backend("merge-shards", str(shard))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "not a shard state" in r.stderr and "refused without running anything" in r.stderr
    assert not marker.exists()
    from backend.engine import state_file

    with pytest.raises(UserError, match="refused without running anything"):  # the Ray driver's path
        state_file.load((shard / "state.pt").read_bytes(), "the state of Ray shard 0")
    assert not marker.exists()


# ---- 3. strings from a database are data ----


def _hostile_copy(src: str, dst: Path) -> None:
    """The database with markup for every SAE's architecture and family, as a file passed
    around might carry."""
    shutil.copy(src, dst)
    con = duckdb.connect(str(dst))
    con.execute("UPDATE saes SET architecture = ? || architecture", [EVIL_MD + " "])
    for table in ("splice_output", "splice_context"):
        con.execute(f"UPDATE {table} SET family = ? || family", [EVIL_MD + " "])
    con.close()


def _rendered(at) -> str:
    """Everything the page's markdown-rendering elements hold."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def test_markup_in_a_database_is_shown_as_text_on_pages_and_in_figures(app, data_dir, tiny_db):
    (data_dir / "tiny.duckdb").unlink()
    _hostile_copy(tiny_db, data_dir / "tiny.duckdb")
    for page, params in (("app.py", {}), ("pages/6_Layers.py", {}), ("pages/6_Layers.py", {"spread": "resid"})):
        at = app(page, **params)
        _no_traceback(at)
        shown = _rendered(at)
        assert "![p](" not in shown and "[click](" not in shown and not re.search(r"(?<!\\)<(img|a )", shown), page
        charts = [c.proto.spec for c in at.get("plotly_chart")]
        assert charts, page
        for spec in charts:
            assert "<a href='http" not in spec and "<img" not in spec, page
        assert any("&lt;a href=" in spec for spec in charts), page  # shown, escaped


def test_claim_sentences_show_database_names_as_text():
    from ui import claims

    prop = pd.DataFrame(
        {
            "architecture": [EVIL_MD] * 2,
            "sae": [EVIL_MD, EVIL_MD],
            "spliced_hook": ["blocks.0.hook_resid_pre"] * 2,
            "hook": ["blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"],
            "resid_change": [0.3, 0.1],
        }
    )
    ctx = pd.DataFrame(
        {
            "architecture": [EVIL_MD] * 2,
            "sae": ["s0", "s1"],
            "hook": [EVIL_MD, "blocks.1.hook_resid_post"],
            "depth": [0, 1],
            "ctx_lo": [1, 1],
            "ctx_hi": [16, 16],
            "increase": [0.2, 0.1],
            "train_context": [None, None],
        }
    )
    for text in (claims.worst_spreader(prop), *claims.context_claims(ctx)):
        assert "![p](" not in text and "[click](" not in text and not re.search(r"(?<!\\)<(img|a )", text), text
        assert r"\!\[p\]" in text


def test_figure_text_is_escaped_but_the_figures_own_markup_is_kept():
    from ui import figures

    fig = figures.go.Figure(
        figures.go.Bar(
            x=["<b>a</b>", "b"],
            y=[1, 2],
            name="<a href='http://x'>n</a>",
            hovertemplate="%{x}" + figures.BR + "y" + figures.extra(),
        )
    )
    fig.add_trace(figures.go.Scatter(x=[1], y=[2], legendgroup="g", legendgrouptitle_text="<b>g</b>"))
    fig.add_trace(figures.go.Heatmap(z=[[1]], colorbar_title_text="<i>c</i>", text=[["<u>z</u>"]]))
    fig.add_annotation(text=figures.tag("a href='Layer?sae=s'") + "<img src=x>" + figures.tag("/a"), x="b", y=1)
    fig.update_layout(title="<i>t</i>")
    out = figures.plain(fig)
    assert list(out.data[0].x) == ["&lt;b&gt;a&lt;/b&gt;", "b"]
    assert out.data[0].name == "&lt;a href='http://x'&gt;n&lt;/a&gt;"
    assert out.data[0].hovertemplate == "%{x}<br>y<extra></extra>"
    assert out.layout.annotations[0].text == "<a href='Layer?sae=s'>&lt;img src=x&gt;</a>"
    assert out.layout.title.text == "&lt;i&gt;t&lt;/i&gt;"
    assert out.data[1].legendgrouptitle.text == "&lt;b&gt;g&lt;/b&gt;"  # a legend group's title too
    assert out.data[2].colorbar.title.text == "&lt;i&gt;c&lt;/i&gt;"
    assert out.data[2].text[0][0] == "&lt;u&gt;z&lt;/u&gt;"


def test_pages_draw_figures_only_through_the_escaping_helper():
    offenders = [
        str(p.relative_to(repo_root()))
        for p in [*repo_root().glob("pages/*.py"), *repo_root().glob("ui/*.py"), repo_root() / "app.py"]
        if "st.plotly_chart(" in p.read_text() and p.name != "common.py"
    ]
    assert offenders == []


# ---- 4. a model that cannot be loaded ----


@pytest.fixture()
def broken_models(tmp_path):
    """An empty folder, and a folder whose weights file is a pickle that would create a file."""
    empty = tmp_path / "empty-model"
    empty.mkdir()
    pickled = tmp_path / "pickled-model"
    pickled.mkdir()
    marker = tmp_path / "ran"
    (pickled / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 16,
                "vocab_size": 30,
            }
        )
    )
    torch.save({"w": _SideEffect(str(marker))}, pickled / "pytorch_model.bin")
    return empty, pickled, marker


def test_a_model_that_fails_to_load_is_a_message_and_the_page_keeps_working(app, monkeypatch, broken_models):
    empty, pickled, marker = broken_models
    for folder in (empty, pickled):
        monkeypatch.setenv("SAE_DASHBOARD_MODEL", str(folder))
        at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann", probe="some text to probe")
        _no_traceback(at)
        assert any("cannot be loaded" in w.value for w in at.warning), [w.value for w in at.warning]
        assert _label_form(at)
        at = app("pages/7_Probe.py", sae="relu-b0", text="some text to probe")
        _no_traceback(at)
        assert any("cannot be loaded" in e.value for e in [*at.error, *at.warning])
    assert not marker.exists()
    sae = empty.parent / "sae"
    make_sae("topk", "blocks.0.hook_resid_pre").save_model(str(sae))
    for folder in (empty, pickled):
        r = run_backend("precompute", "--model", str(folder), "--sae", str(sae), "--db", str(empty.parent / "x.duckdb"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "cannot be loaded" in r.stderr
    assert not marker.exists()


# ---- 5. the password throttle is the server's ----


def test_wrong_guesses_in_one_session_slow_the_next_session(app, data_dir, monkeypatch):
    from ui import labeling

    monkeypatch.setattr(labeling, "_throttle", labeling.Throttle(base=5.0, cap=5.0))
    monkeypatch.setenv("SAE_DASHBOARD_PASSWORD", "s3cret")
    first = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    first.text_input(key="w_pw").input("guess-1").run()
    assert any("Wrong password" in e.value for e in first.error)
    second = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="bob")  # another session
    second.text_input(key="w_pw").input("guess-2").run()
    assert any("was not checked" in w.value for w in second.warning)
    first.run()  # a rerun of the page does not count the same wrong guess again
    assert labeling._throttle._clients[""].failures == 1


# ---- 6 and 12. what a data folder may hold ----


def test_truncated_linked_and_foreign_files_are_not_listed_or_served(app, data_dir, tmp_path):
    time.sleep(0.01)
    data = (data_dir / "tiny.duckdb").read_bytes()
    (data_dir / "b.duckdb").write_bytes(data[: len(data) // 2])  # a copy cut short: newest file
    outside = tmp_path / "outside.duckdb"
    shutil.copy(data_dir / "tiny.duckdb", outside)
    (data_dir / "x.duckdb").symlink_to(outside)
    con = sqlite3.connect(data_dir / "s.duckdb")
    con.execute("CREATE TABLE t (x)")
    con.close()
    assert queries.list_databases() == ["tiny.duckdb"]
    assert "truncated" in queries.problem(data_dir / "b.duckdb")
    assert "link" in queries.problem(data_dir / "x.duckdb")
    assert "SQLite" in queries.problem(data_dir / "s.duckdb")
    server_path = str(data_dir.resolve())
    for name in ("b.duckdb", "x.duckdb", "s.duckdb"):
        for page in ("app.py", "pages/1_Layer.py", "pages/7_Probe.py"):
            at = app(page, db=name)
            _no_traceback(at)
            assert any("not a feature database" in e.value for e in at.error), (name, page)
            assert not any(server_path in e.value or str(data_dir) in e.value for e in at.error)
    r = run_backend("info", str(data_dir / "b.duckdb"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "truncated" in r.stderr


def test_a_file_damaged_after_it_was_listed_is_a_message_without_server_paths(app, data_dir):
    at = app("pages/1_Layer.py", sae="relu-b0")
    _no_traceback(at)
    path = data_dir / "tiny.duckdb"
    size = path.stat().st_size
    with path.open("r+b") as fh:  # garbage over every data block, the headers left as they were
        fh.seek(3 * 4096)
        fh.write(os.urandom(size - 3 * 4096))
    queries.clear_caches()
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3")
    _no_traceback(at)
    assert at.error and not any(str(data_dir) in e.value for e in at.error)


# ---- 7 and 10. stores that are not ours, or not whole ----


def test_an_empty_labels_store_is_reported_and_never_replaced(app, data_dir):
    store = data_dir / "labels.sqlite"
    labels.add(
        store, labels.Label(db="tiny.duckdb", run_id="r", sae="relu-b0", feature=1, verdict="unsure", labeler="a")
    )
    for p in data_dir.glob("labels.sqlite-*"):
        p.unlink()
    store.write_bytes(b"")  # what a full disk or a careless copy leaves
    at = app("pages/2_Feature.py", sae="relu-b0", feature="3", labeler="ann")
    _no_traceback(at)
    assert any("is an empty file" in w.value for w in at.warning)
    at.button(key="feat_label_interpretable").click().run()
    assert any("Not saved" in e.value for e in at.error)
    assert store.stat().st_size == 0


def test_imports_never_write_into_a_file_that_is_not_a_store(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a labels store\n")
    csv = tmp_path / "l.csv"
    csv.write_text("db,run_id,sae,feature,verdict,labeler\ntiny.duckdb,r,relu-b0,1,unsure,ann\n")
    r = run_backend("labels", "import", str(csv), "--labels", str(notes))
    assert r.returncode == 2 and "not a labels store" in r.stderr, r.stderr
    assert notes.read_text() == "my notes, not a labels store\n"
    rows = pd.DataFrame([{"db": "d", "sae": "s", "feature": 1, "source": "x", "text": "t", "score": None}])
    with pytest.raises(UserError, match="not an explanations store"):
        explanations.add(str(notes), rows)
    assert notes.read_text() == "my notes, not a labels store\n"


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_leaves_no_empty_store_or_database_behind(tmp_path, tiny_db, tokenizer_dir, corpus_file):
    env = dict(os.environ, SAE_DASHBOARD_DATA=str(tmp_path))
    # an explanations import that cannot write a byte of its new store
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"index": "3", "description": "x" * 5000}) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "backend", "explanations", "import", str(f), "--db", tiny_db, "--sae", "relu-b0"],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(0),
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not list(tmp_path.glob("explanations.sqlite*"))
    # a precompute that runs out of disk part way: no file that blocks the rerun
    model = save_tiny_gpt2(tmp_path / "gpt", tokenizer_dir)
    make_sae("topk", "transformer.h.0").save_model(str(tmp_path / "sae"))
    db = tmp_path / "out.duckdb"
    args = [
        "--model",
        model,
        "--corpus",
        corpus_file,
        "--n-tokens",
        "256",
        "--context-len",
        "32",
        "--batch-size",
        "4",
        "--sae",
        str(tmp_path / "sae"),
        "--db",
        str(db),
    ]
    r = subprocess.run(
        [sys.executable, "-m", "backend", "precompute", *args],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(20_000),
        timeout=600,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not db.exists() or queries.problem(db) is None
    r = run_backend("precompute", *args, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert queries.problem(db) is None


# ---- 8. a gzip bomb ----


def test_a_gzip_bomb_is_refused_in_bounded_memory_and_time(tmp_path, tiny_db):
    bomb = tmp_path / "bomb.jsonl.gz"
    block = b" " * (1 << 20)
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        for _ in range(300):  # 300 MiB of spaces, about 300 KB on disk
            fh.write(block)
    lines = tmp_path / "lines.jsonl.gz"
    with gzip.open(lines, "wb", compresslevel=9) as fh:
        for _ in range(300):
            fh.write(b"\n" * (1 << 20))
    # the CLI as a user runs it, reporting its own peak memory on the way out: VmHWM is the peak of
    # its own address space, where ru_maxrss would also count the pytest process it was forked from
    own_peak = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('backend', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "    print('peak_kib', hwm.split()[1], file=sys.stderr)\n"
    )
    for f in (bomb, lines):
        start = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", own_peak, "explanations", "import", str(f), "--db", tiny_db, "--sae", "relu-b0",
             "--store", str(tmp_path / "e.sqlite")],
            cwd=repo_root(), capture_output=True, text=True, timeout=300,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)),
        )  # fmt: skip
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "MiB" in r.stderr and time.monotonic() - start < 60
        peak = int(re.search(r"peak_kib (\d+)", r.stderr).group(1))
        assert peak < 600_000, peak  # KiB: the 300 MiB of text never sits in memory
    assert not (tmp_path / "e.sqlite").exists()


# ---- 9. links inside figures ----


_RESERVED = set(";/?:@&=+$,#")


def _plotly_href(href: str) -> str:
    """What Plotly makes of an href: encodeURI(decodeURI(href)), as JavaScript defines both."""

    def decode(m):  # a run of escapes is UTF-8; escapes of reserved characters stay escaped
        return "".join(quote(c, safe="") if c in _RESERVED else c for c in unquote(m.group(0)))

    decoded = re.sub(r"(%[0-9A-Fa-f]{2})+", decode, href)
    return quote(decoded, safe=";,/?:@&=+$-_.!~*'()#")


@pytest.mark.parametrize("name", ["relu-b0", "a=b", "gpt2-small-res-jb/blocks.0.hook_resid_pre", "x:y", "a b%c", "é/ü"])
def test_figure_links_survive_plotlys_re_encoding(name):
    from ui import common

    href = common.figure_url("Layer", sae=name)
    got = parse_qs(urlsplit(_plotly_href(href)).query)
    assert got == {"sae": [name]}


def test_a_name_no_figure_link_can_carry_is_not_linked():
    from ui import common

    assert common.figure_url("Layer", sae="a&b") is None and common.figure_url("Layer", sae="a+b") is None


# ---- 11. imports take what they say or nothing ----


def test_imports_refuse_values_they_would_otherwise_bend(tmp_path, tiny_db):
    from backend.explanations.formats import read_neuronpedia
    from backend.labels.io import import_labels

    store = tmp_path / "labels.sqlite"
    base = {"db": "tiny.duckdb", "run_id": "r", "sae": "relu-b0", "verdict": "unsure", "labeler": "ann"}
    for bad, match in (
        ({**base, "feature": True}, "not a number"),
        ({**base, "feature": 3, "description": "d" * 2001}, "at most 2,000 characters"),
    ):
        f = tmp_path / "bad.json"
        f.write_text(json.dumps([bad]))
        with pytest.raises(UserError, match=match):
            import_labels(str(f), str(store))
    assert not store.exists()
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"index": 1.7, "description": "x"}) + "\n")
    with pytest.raises(UserError, match="not a feature number"):
        read_neuronpedia(str(f))


def test_label_files_without_uids_import_once_and_csv_cells_never_run_as_formulas(tmp_path):
    from backend.labels.io import export_labels, import_labels

    store = tmp_path / "labels.sqlite"
    rows = [
        {"db": "tiny.duckdb", "run_id": "r", "sae": "relu-b0", "feature": i % 5, "verdict": "unsure", "labeler": "ann"}
        for i in range(10)
    ]
    rows[0]["description"] = '=HYPERLINK("http://127.0.0.1:8699","x")'
    rows[1]["description"] = "'=already quoted"
    f = tmp_path / "no-uid.json"
    f.write_text(json.dumps(rows))
    assert import_labels(str(f), str(store)) == 10
    assert import_labels(str(f), str(store)) == 0  # the same file again adds nothing
    out = tmp_path / "out.csv"
    export_labels(str(out), str(store))
    text = out.read_text()
    assert "'=HYPERLINK" in text and not re.search(r'(^|,)"?=HYPERLINK', text, re.M)
    again = tmp_path / "again.sqlite"
    import_labels(str(out), str(again))
    assert sorted(labels.all_labels(again)["description"].dropna()) == sorted(
        [rows[0]["description"], rows[1]["description"]]
    )
    r = run_backend("labels", "export", str(tmp_path / "x.csv"), "--labels", str(tmp_path / "missing.sqlite"))
    assert r.returncode == 2 and "no labels store" in r.stderr and not (tmp_path / "x.csv").exists()


# ---- 13. a long parameter name ----


def test_a_long_parameter_name_is_reported_as_a_name(app):
    at = app(**{"p" * 101: "1"})
    _no_traceback(at)
    assert any("name" in e.value and "the limit is 100" in e.value for e in at.error)


def test_a_terminated_server_does_not_leave_the_dashboard_running(tmp_path):
    """`python -m backend serve` (and `demo`) stopped with SIGTERM, as a service manager or `kill`
    stops it: the dashboard stops with it rather than living on as an orphan holding the port."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    health = f"http://127.0.0.1:{port}/_stcore/health"
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve", "--port", str(port)],
        cwd=repo_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                assert urllib.request.urlopen(health, timeout=1).status == 200
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the dashboard did not start")
        # it is this process, run from the repository root (where .streamlit/config.toml is read)
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == repo_root().resolve()
        assert "streamlit" in Path(f"/proc/{proc.pid}/cmdline").read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        for _ in range(20):
            try:
                urllib.request.urlopen(health, timeout=1)
            except OSError:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the dashboard still answers after its command was terminated")
    finally:
        proc.kill()
