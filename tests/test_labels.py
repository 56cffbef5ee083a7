"""The labels store: append-only history, concurrency, crash safety, statistics, export/import.
Store tests run on both stores: an SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from backend import labels
from backend.errors import UserError
from tests.helpers import repo_root, run_backend


def _label(feature=1, verdict="interpretable", who="ann", **kw):
    return labels.Label(db="demo.duckdb", run_id="demo", sae="s", feature=feature, verdict=verdict, labeler=who, **kw)


pytestmark = pytest.mark.integration


def test_new_verdict_supersedes_but_keeps_history(labels_store):
    p = labels_store
    labels.add(p, _label(verdict="unsure"))
    labels.add(p, _label(verdict="interpretable", description="closing brackets"))
    labels.add(p, _label(verdict="not interpretable", who="bob"))
    assert len(labels.all_labels(p)) == 3
    cur = labels.latest(p)
    assert sorted(zip(cur["labeler"], cur["verdict"])) == [("ann", "interpretable"), ("bob", "not interpretable")]
    hist = labels.history(p, "demo.duckdb", "s", 1)
    assert list(hist["verdict"]) == ["not interpretable", "interpretable", "unsure"]


def test_feature_status_is_each_features_current_verdicts_counted(tmp_path):
    """Per feature: its labelers' latest verdicts counted, the majority (a tie is "unsure/split"),
    and the newest description among those verdicts, checked against that rule read off the history."""
    import random

    p = str(tmp_path / "labels.sqlite")
    rng = random.Random(3)
    verdicts = ["interpretable", "not interpretable", "unsure"]
    rows = []
    for _ in range(120):
        f, who, v = rng.randrange(9), rng.choice("abcd"), rng.choice(verdicts)
        desc = rng.choice(["", "", f"d{rng.randrange(100)}"])
        rows.append((f, who, v, desc))
        labels.add(p, _label(feature=f, verdict=v, who=who, description=desc))
    labels.add(p, labels.Label(db="demo.duckdb", run_id="demo", sae="other", feature=0, verdict="unsure", labeler="a"))
    got = labels.feature_status(p, "demo.duckdb", "s").set_index("feature")
    assert sorted(got.index) == sorted({r[0] for r in rows})
    for f in got.index:
        mine = [r for r in rows if r[0] == f]
        last = {who: i for i, (_, who, _, _) in enumerate(mine)}  # each labeler's last label
        current = {who: mine[i][2] for who, i in last.items()}
        yes = sum(v == "interpretable" for v in current.values())
        no = sum(v == "not interpretable" for v in current.values())
        label = "interpretable" if yes > no else "not interpretable" if no > yes else "unsure/split"
        written = [mine[i][3] for i in sorted(last.values()) if mine[i][3]]
        assert got.loc[f, "n_labels"] == len(current), f
        assert got.loc[f, "label"] == label, f
        assert got.loc[f, "description"] == (written[-1] if written else None), f


def test_bad_labels_are_refused_and_change_nothing(labels_store):
    p = labels_store
    labels.add(p, _label())
    for bad in (dict(verdict="maybe"), dict(who="  "), dict(confidence=7), dict(feature=2**31), dict(feature=-1)):
        with pytest.raises(UserError):
            labels.add(p, _label(**bad))
    assert len(labels.all_labels(p)) == 1


def test_twenty_threads_at_once_lose_nothing(labels_store):
    p = labels_store
    uids, errors = [], []
    start = threading.Barrier(20)

    def work(i):
        try:
            start.wait()
            for j in range(5):
                uids.append(labels.add(p, _label(feature=i * 10 + j, who=f"user{i}")))
        except Exception as e:  # noqa: BLE001 - any failure fails the test below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = labels.all_labels(p)
    assert len(uids) == 100 and set(stored["uid"]) == set(uids)


WRITER = """
import sys
from backend import labels
p = sys.argv[1]
i = 0
while True:
    uid = labels.add(p, labels.Label(db="d", run_id="r", sae="s", feature=i, verdict="unsure", labeler="w"))
    print(uid, flush=True)   # acknowledged: the commit returned
    i += 1
"""


def test_killed_writer_keeps_every_acknowledged_label(tmp_path):
    p = tmp_path / "labels.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], cwd=repo_root(), stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) == 40:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]  # lines already in the pipe
    stored = set(labels.all_labels(p)["uid"])
    assert len(acked) >= 40
    assert set(acked) <= stored


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_import_round_trip(tmp_path, fmt, labels_store):
    src, dst = tmp_path / "a.sqlite", labels_store
    labels.add(src, _label(description='comma, "quotes" and <tags>'))
    labels.add(src, _label(feature=2, verdict="unsure", who="bob", confidence=2))
    f = tmp_path / f"out.{fmt}"
    assert labels.export_labels(str(f), str(src)) == 2
    assert labels.import_labels(str(f), str(dst)) == 2
    assert labels.import_labels(str(f), str(dst)) == 0  # re-import never duplicates
    a = labels.all_labels(src).sort_values("uid").reset_index(drop=True)
    b = labels.all_labels(dst).sort_values("uid").reset_index(drop=True)
    for col in ("uid", "feature", "verdict", "description", "labeler"):
        assert list(a[col].astype(str)) == list(b[col].astype(str))


def test_import_rejects_bad_file_without_writing(tmp_path, labels_store):
    dst = labels_store
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "db,run_id,sae,feature,verdict,description,confidence,labeler\n"
        "d,r,s,1,interpretable,,,ann\n"
        "d,r,s,2,brilliant,,,ann\n"
    )
    with pytest.raises(UserError, match="verdict must be one of"):
        labels.import_labels(str(bad), str(dst))
    assert labels.all_labels(dst).empty


@pytest.mark.slow  # a process of its own: seconds
def test_labels_cli(tmp_path):
    src = tmp_path / "labels.sqlite"
    labels.add(src, _label())
    out = tmp_path / "x.json"
    r = run_backend("labels", "export", str(out), "--labels", str(src))
    assert r.returncode == 0 and "wrote 1 labels" in r.stdout
    r = run_backend("labels", "import", str(out), "--labels", str(tmp_path / "other.sqlite"))
    assert r.returncode == 0 and "imported 1 new labels" in r.stdout
    r = run_backend("labels", "import", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_order_is_insertion_not_client_time(labels_store, tmp_path):
    """An imported verdict dated far in the future does not outrank a verdict given after it."""
    f = tmp_path / "future.csv"
    f.write_text(
        "uid,db,run_id,sae,feature,verdict,description,confidence,labeler,created_at\n"
        "u-future,demo.duckdb,demo,s,1,not interpretable,,,ann,9999-12-31T00:00:00\n"
    )
    assert labels.import_labels(str(f), labels_store) == 1
    labels.add(labels_store, _label(verdict="interpretable"))
    cur = labels.latest(labels_store)
    assert list(cur["verdict"]) == ["interpretable"]
    assert list(labels.history(labels_store, "demo.duckdb", "s", 1)["verdict"]) == [
        "interpretable",
        "not interpretable",
    ]


def _cli(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process (its exit code and stderr); test_labels_cli runs it as a process."""
    from backend.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


BAD_IMPORTS = {
    "feature abc": "d,r,s,abc,interpretable,,,ann,",
    "huge feature": "d,r,s,99999999999,interpretable,,,ann,",
    "fractional feature": "d,r,s,1.5,interpretable,,,ann,",
    "confidence high": "d,r,s,1,interpretable,,high,ann,",
    "confidence 9": "d,r,s,1,interpretable,,9,ann,",
    "bad date": "d,r,s,1,interpretable,,,ann,yesterday-ish",
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_cli_refuses_bad_imports_whole(tmp_path, case, capsys):
    store = tmp_path / "labels.sqlite"
    labels.add(store, _label())
    f = tmp_path / "in.csv"
    f.write_text(
        "db,run_id,sae,feature,verdict,description,confidence,labeler,created_at\n"
        "d,r,s,7,unsure,,,ann,\n" + BAD_IMPORTS[case] + "\n"
    )
    code, err = _cli(capsys, "labels", "import", str(f), "--labels", str(store))
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "row 3" in err
    assert len(labels.all_labels(store)) == 1  # the good first row was not written either


def test_cli_file_faults_are_one_line(tmp_path, capsys):
    store = tmp_path / "labels.sqlite"
    labels.add(store, _label())
    dup = tmp_path / "dup.json"
    dup.write_text(
        '[{"uid": "x", "db": "d", "run_id": "r", "sae": "s", "feature": 1, "verdict": "unsure", "labeler": "a"},'
        ' {"uid": "x", "db": "d", "run_id": "r", "sae": "s", "feature": 2, "verdict": "unsure", "labeler": "a"}]'
    )
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "binary.parquet").write_bytes(b"\x00\xffnot parquet at all\x01" * 10)
    cases = [
        (("import", str(dup)), "appears twice"),
        (("import", str(tmp_path / "folder.csv")), "is a folder"),
        (("import", str(tmp_path / "binary.parquet")), "could not read"),
        (("export", str(tmp_path / "folder.csv")), "is a folder"),
        (("export", str(tmp_path / "missing" / "out.csv")), "does not exist"),
        (("export", str(tmp_path / "out.txt")), ".csv, .json or .parquet"),
    ]
    for args, message in cases:
        code, err = _cli(capsys, "labels", *args, "--labels", str(store))
        assert code == 2 and "Traceback" not in err, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert len(labels.all_labels(store)) == 1
    assert not (tmp_path / "missing").exists()


def test_reads_never_create_and_a_lost_store_is_reported(tmp_path):
    store = tmp_path / "labels.sqlite"
    assert labels.all_labels(store).empty and not store.exists()  # reading creates nothing
    labels.add(store, _label())
    store.unlink()
    for p in tmp_path.glob("labels.sqlite-*"):
        p.unlink()
    with pytest.raises(UserError, match="missing, but it was created here before"):
        labels.all_labels(store)
    with pytest.raises(UserError, match="missing, but it was created here before"):
        labels.add(store, _label())
    assert not store.exists()  # not silently recreated
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="labels store"):
        labels.all_labels(junk)
    with pytest.raises(UserError, match="labels store"):
        labels.add(junk, _label())


def test_unwritable_folder_is_a_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="labels store"):
        labels.add(blocker / "labels.sqlite", _label())  # its folder is a file


def test_labels_of_the_former_duckdb_store_carry_over(tmp_path):
    import duckdb

    old = tmp_path / "labels.duckdb"
    con = duckdb.connect(str(old))
    con.execute(
        "CREATE TABLE labels (uid VARCHAR, db VARCHAR, run_id VARCHAR, sae VARCHAR, feature INTEGER, verdict VARCHAR,"
        " description VARCHAR, confidence INTEGER, labeler VARCHAR, created_at TIMESTAMP)"
    )
    con.execute("INSERT INTO labels VALUES ('a', 'd', 'r', 's', 1, 'unsure', NULL, NULL, 'ann', '2026-01-01 10:00')")
    con.execute("INSERT INTO labels VALUES ('b', 'd', 'r', 's', 1, 'interpretable', NULL, 2, 'ann', '2026-01-02')")
    con.close()
    new = tmp_path / "labels.sqlite"
    assert list(labels.all_labels(new)["uid"]) == ["a", "b"]  # readable before any write
    assert not new.exists()
    labels.add(new, _label(feature=5))
    assert list(labels.all_labels(new)["uid"])[:2] == ["a", "b"]
    assert list(labels.latest(new, "d")["verdict"]) == ["interpretable"]


DURABLE_WRITER = """
import sys
from backend import labels
loc, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for i in range(n):
    uid = labels.add(loc, labels.Label(db="d", run_id="r", sae="s", feature=i, verdict="unsure", labeler=who))
    print(uid, flush=True)   # acknowledged: the commit returned
"""


@pytest.mark.slow
def test_twenty_processes_with_kills_lose_no_acknowledged_label(labels_store, tmp_path):
    """20 writer processes x 50 labels, 20 more killed with SIGKILL at random moments, and the
    CLI importing 300 labels meanwhile: every acknowledged label is stored, exactly once."""
    import random

    import pandas as pd

    rng = random.Random(0)
    imported = tmp_path / "bulk.csv"
    pd.DataFrame(
        {
            "uid": [f"bulk-{i}" for i in range(300)],
            "db": "d",
            "run_id": "r",
            "sae": "s",
            "feature": range(300),
            "verdict": "interpretable",
            "labeler": "importer",
        }
    ).to_csv(imported, index=False)

    def start(who: str, n: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", DURABLE_WRITER, labels_store, who, str(n)],
            cwd=repo_root(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    steady = [start(f"steady{i}", 50) for i in range(20)]
    victims = [start(f"victim{i}", 10_000) for i in range(20)]
    cli = subprocess.Popen(
        [sys.executable, "-m", "backend", "labels", "import", str(imported), "--labels", labels_store],
        cwd=repo_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for p in victims:
        assert p.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 120
    for p in rng.sample(victims, len(victims)):
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
    acked, killed_acked = [], []
    for p in steady:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err[-2000:]
        acked += [line for line in out.split() if line != "ready"]
    for p in victims:
        out, _ = p.communicate(timeout=30)
        killed_acked += [line for line in out.split() if line != "ready"]
    out, err = cli.communicate(timeout=max(1, deadline - time.monotonic()))
    assert cli.returncode == 0 and "imported 300 new labels" in out, err

    stored = labels.all_labels(labels_store)
    assert len(acked) == 20 * 50
    assert len(killed_acked) > 0, "the victims were killed before writing anything; the test proves little"
    assert set(acked) | set(killed_acked) <= set(stored["uid"])
    assert {f"bulk-{i}" for i in range(300)} <= set(stored["uid"])
    assert not stored["uid"].duplicated().any()
    assert not stored.duplicated(["labeler", "feature"]).any()  # each writer wrote each feature once
    assert stored["seq"].is_monotonic_increasing and stored["seq"].is_unique
