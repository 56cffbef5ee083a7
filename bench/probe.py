"""Live-model latency on the demo: a 512-token probe through the model and all its SAEs, and one
steering request (encoder: the cosine-vs-strength curve and the nearest corpus sequences, plain
and steered), single session and with concurrent sessions (threads sharing the one live model,
as Streamlit sessions do). Each request uses a new text, so no cached probe is reused.

Needs the demo database (`python -m backend demo --no-serve`).
Last line: probe_p95_ms=<x> steer_p95_ms=<y>  (single session)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.live import steer  # noqa: E402
from backend.live.model import load_live  # noqa: E402
from backend.live.probe import probe  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/demo.duckdb")
    ap.add_argument("--run", default="demo")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=5)
    args = ap.parse_args()
    t = time.perf_counter()
    live = load_live(args.db, args.run)
    print(f"load model + {len(live.saes)} SAEs: {time.perf_counter() - t:.1f} s")
    import duckdb

    con = duckdb.connect(args.db, read_only=True)
    sae = con.execute("SELECT sae FROM saes ORDER BY depth DESC, sae LIMIT 1").fetchone()[0]
    f, max_act = con.execute(
        "SELECT feature, max_act FROM features WHERE sae = ? ORDER BY count DESC LIMIT 1", [sae]
    ).fetchone()
    con.close()
    from pydoc_data.topics import topics

    words = " ".join(topics[k] for k in sorted(topics)[:40]).split()
    tok = live.adapter.tokenizer
    limit = live.limits.max_tokens - 2

    def text(i: int) -> str:
        ids = tok(f"request {i}: " + " ".join(words[i * 7 : i * 7 + 800]), add_special_tokens=False)["input_ids"]
        return tok.decode(ids[:limit])

    t = time.perf_counter()
    index = steer.corpus_index(live, args.db, args.run)
    print(f"corpus index for steering (first use): {time.perf_counter() - t:.1f} s")
    assert len(live.tokenize(text(0))[0][0]) == live.limits.max_tokens

    def one_probe(i: int) -> float:
        t = time.perf_counter()
        probe(live, text(i))
        return (time.perf_counter() - t) * 1000

    def one_steer(i: int) -> float:
        t = time.perf_counter()
        s = text(i)[:400]
        steer.embedding_curve(live, s, sae, f, max_act)
        steer.nearest(live, index, s, sae, f, 4.0, max_act)
        return (time.perf_counter() - t) * 1000

    one_probe(10_000), one_steer(10_001)  # warm-up
    single = {"probe": [one_probe(i) for i in range(args.repeat)], "steer": [one_steer(i) for i in range(args.repeat)]}
    for k, xs in single.items():
        print(f"1 session, {k}: p50 {statistics.median(xs):.0f} ms, p95 {pct(xs, 0.95):.0f} ms (n={len(xs)})")

    for kind, fn in (("probe", one_probe), ("steer", one_steer)):
        times: list[float] = []

        def session(j: int, fn=fn, times=times) -> None:
            for r in range(max(2, args.repeat // args.sessions)):
                times.append(fn(1000 * (j + 1) + r))

        threads = [threading.Thread(target=session, args=(j,)) for j in range(args.sessions)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(
            f"{args.sessions} sessions at once, {kind}: p50 {statistics.median(times):.0f} ms, "
            f"p95 {pct(times, 0.95):.0f} ms (n={len(times)}; requests queue on the one model)"
        )
    print(f"probe_p95_ms={pct(single['probe'], 0.95):.0f} steer_p95_ms={pct(single['steer'], 0.95):.0f}")


if __name__ == "__main__":
    main()
