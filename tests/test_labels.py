"""The labels store: append-only history, concurrency, crash safety, statistics, export/import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from backend import labels
from backend.errors import UserError
from tests.conftest import repo_root, run_backend


def _label(feature=1, verdict="interpretable", who="ann", **kw):
    return labels.Label(db="demo.duckdb", run_id="demo", sae="s", feature=feature, verdict=verdict, labeler=who, **kw)


def test_new_verdict_supersedes_but_keeps_history(tmp_path):
    p = tmp_path / "labels.sqlite"
    labels.add(p, _label(verdict="unsure"))
    labels.add(p, _label(verdict="interpretable", description="closing brackets"))
    labels.add(p, _label(verdict="not interpretable", who="bob"))
    assert len(labels.all_labels(p)) == 3
    cur = labels.latest(p)
    assert sorted(zip(cur["labeler"], cur["verdict"])) == [("ann", "interpretable"), ("bob", "not interpretable")]
    hist = labels.history(p, "demo.duckdb", "s", 1)
    assert list(hist["verdict"]) == ["not interpretable", "interpretable", "unsure"]


def test_bad_labels_are_refused_and_change_nothing(tmp_path):
    p = tmp_path / "labels.sqlite"
    labels.add(p, _label())
    for bad in (dict(verdict="maybe"), dict(who="  "), dict(confidence=7)):
        with pytest.raises(UserError):
            labels.add(p, _label(**bad))
    assert len(labels.all_labels(p)) == 1


def test_twenty_threads_at_once_lose_nothing(tmp_path):
    p = tmp_path / "labels.sqlite"
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


def test_agreement_and_intervals():
    import pandas as pd

    cur = pd.DataFrame(
        {
            "db": "d",
            "sae": "s",
            "feature": [1, 1, 2, 2, 3, 3, 4],
            "labeler": ["a", "b", "a", "b", "a", "b", "a"],
            "verdict": [
                "interpretable",
                "interpretable",
                "not interpretable",
                "interpretable",
                "not interpretable",
                "not interpretable",
                "interpretable",
            ],
        }
    )
    ag = labels.agreement(cur)
    assert ag["n_features"] == 3
    assert ag["percent_agreement"] == pytest.approx(2 / 3)
    # Cohen: po = 2/3; a says yes 1/3, b says yes 2/3 -> pe = 1/3*2/3 + 2/3*1/3 = 4/9
    assert ag["cohen_kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert list(labels.disagreements(cur)["feature"]) == [2]
    lo, hi = labels.wilson(0, 10)
    assert lo == 0 and 0.2 < hi < 0.35
    lo, hi = labels.wilson(5, 10)
    assert lo < 0.5 < hi
    by = labels.interpretability_by_bucket(
        cur.assign(log10_density=[-1.5] * 4 + [-6.0] * 3), lambda x: "low" if x < -5 else "high"
    )
    # features count once, by majority: high = feature 1 (yes, yes) and feature 2 (a tie, left
    # out); low = feature 3 (no, no) and feature 4 (yes)
    got = {r.bucket: (r.k, r.n) for r in by.itertuples()}
    assert got == {"high": (1, 1), "low": (1, 2)}


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_import_round_trip(tmp_path, fmt):
    src, dst = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
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


def test_import_rejects_bad_file_without_writing(tmp_path):
    dst = tmp_path / "b.sqlite"
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "db,run_id,sae,feature,verdict,description,confidence,labeler\n"
        "d,r,s,1,interpretable,,,ann\n"
        "d,r,s,2,brilliant,,,ann\n"
    )
    with pytest.raises(UserError, match="verdict must be one of"):
        labels.import_labels(str(bad), str(dst))
    assert labels.all_labels(dst).empty


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
