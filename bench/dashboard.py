"""Dashboard latency at GPT-2-small scale on a synthetic feature database.

Builds (once) a database shaped like 12 layers x 24,576 features with 20 top + 20 quantile
examples each (32-token windows), through the real schema, then times:
  - the Layer page: a Streamlit AppTest run of the page in a started app (histogram + 24,576-row
    table), cold query caches;
  - a feature drilldown's queries (feature, examples, token effects, neighbours) on random
    features with cold caches, p50/p95.
Last line: feature_p95_ms=<x> layer_page_s=<y>

With --browser it instead measures pages in a real browser: `streamlit run app.py` (the
repository's .streamlit/config.toml, file watcher off unless --watcher auto) over a data folder,
and N concurrent Chromium sessions (--sessions 1 5 20), each opening the Overview, a Layer page
and three Feature pages in turn; time to content per page (navigation start to the page's own
content visible), p50/p95 per N.
Last line: s1_p50_ms=<a> s1_p95_ms=<b> s5_p50_ms=... s20_p95_ms=<z>

With --browser --every-page it instead opens every page in one browser session, --repeat
times in turn (the first round after the server starts is reported apart as cold), and times
verdict saves on the Label queue: a click on a verdict until the saved verdict shows, and "Next"
until the next feature's examples show. It works on a copy of the data folder's newest database
(labels go to the copy's own store).
Last line: page_p95_ms=<a> <page>_p95_ms=... verdict_p95_ms=<v> next_p95_ms=<n>

With --pages it measures each page's own work (the script run through AppTest, cold and warm
query caches) on the newest database of --data.
Last line: overview_cold_ms=<a> overview_warm_ms=<b> layer_cold_ms=... interpretability_warm_ms=<z>
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.store import queries, writes  # noqa: E402
from backend.store.schema import RunStatus  # noqa: E402


def build(
    path: Path,
    n_layers: int,
    d_sae: int,
    n_ex: int,
    window: int,
    seq_len: int = 128,
    n_seqs: int = 20_000,
    vocab: int = 50_257,
    seed: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    path.unlink(missing_ok=True)
    con = writes.connect_write(path)
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO runs (run_id, status, model, model_kind, corpus, n_tokens, n_seqs, context_len) "
        "VALUES ('synthetic', ?, 'gpt2-small (synthetic)', 'causal', 'synthetic', ?, ?, ?)",
        [RunStatus.COMPLETE, n_seqs * seq_len, n_seqs, seq_len],
    )
    toks = rng.integers(0, vocab, size=(n_seqs, seq_len), dtype=np.int32)
    seq_tbl = pa.table(
        {
            "run_id": pa.array(["synthetic"] * n_seqs),
            "seq": pa.array(np.arange(n_seqs, dtype=np.int32)),
            "tokens": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n_seqs * seq_len + 1, seq_len, dtype=np.int32)), pa.array(toks.ravel())
            ),
        }
    )
    con.register("seq_tbl", seq_tbl)
    con.execute("INSERT INTO sequences SELECT * FROM seq_tbl")
    voc = pa.table(
        {
            "run_id": pa.array(["synthetic"] * vocab),
            "token_id": pa.array(np.arange(vocab, dtype=np.int32)),
            "token": pa.array([f" tok{i}" for i in range(vocab)]),
        }
    )
    con.register("voc", voc)
    con.execute("INSERT INTO vocab SELECT * FROM voc")
    for layer in range(n_layers):
        sae = f"blocks.{layer}.hook_resid_pre"
        print(f"  layer {layer}", file=sys.stderr, flush=True)
        logd = rng.normal(-3.5, 1.2, d_sae)
        density = np.where(rng.random(d_sae) < 0.03, 0.0, 10 ** np.clip(logd, -7, 0))
        count = np.round(density * n_seqs * seq_len).astype(np.int64)
        con.execute(
            "INSERT INTO saes (run_id, sae, hook, depth, source, architecture, d_in, d_sae, n_tokens, l0, mse, "
            "explained_variance, n_dead, n_dense, effect_kind, hist_lo, hist_hi, context_left, context_right) "
            "VALUES ('synthetic', ?, ?, ?, 'synthetic', 'standard', 768, ?, ?, 30, 1, 0.9, ?, ?, 'unembed', "
            "-4, 4, 24, 8)",
            [sae, sae, layer - 0.5, d_sae, n_seqs * seq_len, int((count == 0).sum()), int((density > 0.1).sum())],
        )
        hist = rng.integers(0, 100, size=(d_sae, 66), dtype=np.int32)
        feats = pa.table(
            {
                "sae": pa.array([sae] * d_sae),
                "feature": pa.array(np.arange(d_sae, dtype=np.int32)),
                "count": pa.array(count),
                "density": pa.array(density),
                "mean_act": pa.array(rng.random(d_sae)),
                "max_act": pa.array(rng.random(d_sae) * 10),
                "hist": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, d_sae * 66 + 1, 66, dtype=np.int32)), pa.array(hist.ravel())
                ),
                "top_tokens": pa.array([" a | b | c"] * d_sae),
            }
        )
        con.register("feats", feats)
        con.execute("INSERT INTO features SELECT * FROM feats")
        n = d_sae * n_ex
        f = np.repeat(np.arange(d_sae, dtype=np.int32), n_ex)
        j = np.tile(np.arange(n_ex), d_sae)
        pos = rng.integers(window, seq_len, n).astype(np.int16)
        ex = pa.table(
            {
                "sae": pa.array([sae] * n),
                "feature": pa.array(f),
                "kind": pa.array((j >= n_ex // 2).astype(np.int8)),
                "rank": pa.array(j.astype(np.int16)),
                "quantile": pa.array(np.where(j >= n_ex // 2, (j - n_ex // 2) // 4, -1).astype(np.int8)),
                "seq": pa.array(rng.integers(0, n_seqs, n).astype(np.int32)),
                "pos": pa.array(pos),
                "ctx_start": pa.array((pos - 24).clip(0).astype(np.int16)),
                "value": pa.array(rng.random(n).astype(np.float32)),
                "acts": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, n * window + 1, window, dtype=np.int32)),
                    pa.array(rng.random(n * window).astype(np.float32)),
                ),
            }
        )
        con.register("ex", ex)
        con.execute("INSERT INTO examples SELECT * FROM ex")
        k = 10
        te = pa.table(
            {
                "sae": pa.array([sae] * d_sae * 2 * k),
                "feature": pa.array(np.repeat(np.arange(d_sae, dtype=np.int32), 2 * k)),
                "direction": pa.array(np.tile(np.repeat(np.array([1, -1], dtype=np.int8), k), d_sae)),
                "rank": pa.array(np.tile(np.arange(k, dtype=np.int16), 2 * d_sae)),
                "token_id": pa.array(rng.integers(0, vocab, d_sae * 2 * k).astype(np.int32)),
                "value": pa.array(rng.random(d_sae * 2 * k).astype(np.float32)),
            }
        )
        con.register("te", te)
        con.execute("INSERT INTO token_effects SELECT * FROM te")
        nb = pa.table(
            {
                "sae": pa.array([sae] * d_sae * k),
                "feature": pa.array(np.repeat(np.arange(d_sae, dtype=np.int32), k)),
                "rank": pa.array(np.tile(np.arange(k, dtype=np.int16), d_sae)),
                "other": pa.array(rng.integers(0, d_sae, d_sae * k).astype(np.int32)),
                "cosine": pa.array(rng.random(d_sae * k).astype(np.float32)),
            }
        )
        con.register("nb", nb)
        con.execute("INSERT INTO neighbours SELECT * FROM nb")
        from backend.engine.tables import density_hist_frame

        dh = density_hist_frame(sae, density)
        con.register("dh", dh)
        con.execute("INSERT INTO density_hist SELECT * FROM dh")
    con.execute("COMMIT")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/bench/gpt2-scale.duckdb")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-sae", type=int, default=24_576)
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--samples", type=int, default=100, help="features timed")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    path = Path(args.db)
    if args.rebuild or not path.exists():
        t = time.perf_counter()
        print(f"building {path} ...", file=sys.stderr)
        build(path, args.layers, args.d_sae, args.examples, window=33)
        print(f"built in {time.perf_counter() - t:.0f} s, {path.stat().st_size / 1e9:.2f} GB", file=sys.stderr)
    p95, layer_s = latencies(path, args.samples)
    print(f"feature_p95_ms={p95:.1f} layer_page_s={layer_s:.2f}")


def latencies(path: Path, samples: int = 100, layer_runs: int = 5) -> tuple[float, float]:
    """(feature drilldown p95 in ms, Layer page median in s) on the database at `path` (the run
    of its first SAE, if it holds several); prints the details."""
    db = str(path)
    os.environ["SAE_DASHBOARD_DATA"] = str(path.parent.resolve())
    rng = np.random.default_rng(1)
    saes = queries.saes(db)
    saes = saes[saes["run_id"] == saes["run_id"].iloc[0]]
    sae_names, run_id, d_sae = list(saes["sae"]), saes["run_id"].iloc[0], int(saes["d_sae"].iloc[0])

    times = []
    for _ in range(samples):
        queries.clear_caches()
        queries.saes(db)  # the SAE list is loaded once per app start, not per feature
        queries.vocab(db, run_id)
        sae, f = sae_names[rng.integers(len(sae_names))], int(rng.integers(d_sae))
        t = time.perf_counter()
        queries.feature(db, sae, f)
        queries.examples(db, sae, f)
        queries.token_effects(db, sae, f)
        queries.neighbours(db, sae, f)
        times.append((time.perf_counter() - t) * 1000)
    p50, p95 = statistics.median(times), float(np.percentile(times, 95))
    print(f"feature drilldown queries (cold): p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(times)} features")

    from streamlit.testing.v1 import AppTest

    # One app, started once (as a server would be); each timed run opens another SAE's Layer page
    # with cold query caches: the DuckDB reads, the histogram, and the d_sae-row table.
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.switch_page("pages/1_Layer.py")
    at.query_params["db"] = path.name
    at.query_params["sae"] = sae_names[-1]
    at.run()
    page_times = []
    for sae in sae_names[:layer_runs]:
        queries.clear_caches()
        at.query_params["sae"] = sae
        t = time.perf_counter()
        at.run()
        page_times.append(time.perf_counter() - t)
        assert not at.exception, [e.value for e in at.exception]
        assert len(at.dataframe[0].value) == d_sae
    layer_s = statistics.median(page_times)
    print(
        f"layer page (AppTest rerun, cold query caches, {d_sae:,} rows): median {layer_s:.2f} s, "
        f"runs {', '.join(f'{t:.2f}' for t in page_times)}"
    )
    return p95, layer_s


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def _serve(data: Path, port: int, watcher: str):
    import subprocess
    import urllib.request

    env = dict(os.environ, SAE_DASHBOARD_DATA=str(data.resolve()))
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--server.fileWatcherType", watcher]
    proc = subprocess.Popen(
        cmd, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("streamlit did not start")


def _run_while_serving(proc, run) -> None:
    """Run the coroutine function `run`, then stop the server `proc` however it ended."""
    import asyncio

    try:
        asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _session(browser, base: str, db: str, sae: str, features: list[int], out: list) -> None:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(180_000)
    visits = [
        (f"/?db={db}", "[data-testid='stPlotlyChart']", "overview"),
        (f"/Layer?db={db}&sae={sae}", "[data-testid='stDataFrame']", "layer"),
    ]
    visits += [(f"/Feature?db={db}&sae={sae}&feature={f}", "span.tok", "feature") for f in features]
    for url, ready, kind in visits:
        t = time.perf_counter()
        await page.goto(base + url)
        await page.locator(ready).first.wait_for()
        out.append((kind, (time.perf_counter() - t) * 1000))
    await ctx.close()


def browser_bench(data: Path, sessions: list[int], watcher: str, port: int = 8765) -> dict:
    import asyncio

    import duckdb
    from playwright.async_api import async_playwright

    os.environ["SAE_DASHBOARD_DATA"] = str(data)
    db = queries.list_databases()[0]
    con = duckdb.connect(str(data / db), read_only=True)
    sae = con.execute("SELECT sae FROM saes ORDER BY depth DESC LIMIT 1").fetchone()[0]
    busy = [
        r[0]
        for r in con.execute(
            "SELECT feature FROM features WHERE sae = ? AND count > 0 ORDER BY count DESC LIMIT 60", [sae]
        ).fetchall()
    ]
    con.close()
    proc = _serve(data, port, watcher)
    results: dict = {}

    async def run() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            cold: list = []
            await _session(browser, f"http://127.0.0.1:{port}", db, sae, busy[:1], cold)  # first visits after start
            warm: list = []
            await _session(browser, f"http://127.0.0.1:{port}", db, sae, busy[:1], warm)  # the same pages again
            results["cold"], results["warm"] = cold, warm
            for n in sessions:
                out: list = []
                rng = np.random.default_rng(n)
                await asyncio.gather(
                    *(
                        _session(
                            browser, f"http://127.0.0.1:{port}", db, sae, [int(x) for x in rng.choice(busy, 3)], out
                        )
                        for _ in range(n)
                    )
                )
                results[n] = out
            await browser.close()

    _run_while_serving(proc, run)
    return results


EVERY_PAGE = [  # name, URL path, what shows that the page's content is there (its last section)
    ("overview", "/?db={db}", "[data-testid='stPlotlyChart']"),
    ("layer", "/Layer?db={db}&sae={sae}", "[data-testid='stDataFrame']"),
    ("feature", "/Feature?db={db}&sae={sae}&feature={f}", "span.tok"),
    ("search", "/Search?db={db}&q=return", "[data-testid='stDataFrame']"),
    ("queue", "/Label_queue?db={db}&sae={sae}", "span.tok"),
    ("interpretability", "/Interpretability?db={db}", "h3:has-text('Export and import')"),
    ("layers", "/Layers?db={db}", "h3:has-text('Reconstruction inside and beyond')"),
    ("probe", "/Probe?db={db}&sae={sae}&text=def+main(args):+return+args", "h3:has-text('Every SAE')"),
    ("clusters", "/Clusters?db={db}&sae={sae}", "h3:has-text('Dense features'), div:has-text('No feature of this')"),
]


def every_page_bench(data: Path, repeat: int, port: int = 8766) -> dict[str, list[float]]:
    """Milliseconds per page and per verdict step (see the module docstring), on a copy of `data`."""
    import shutil
    import tempfile

    import duckdb
    from playwright.async_api import async_playwright

    os.environ["SAE_DASHBOARD_DATA"] = str(data)
    db = queries.list_databases()[0]
    copy = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    shutil.copy(data / db, copy / db)
    con = duckdb.connect(str(copy / db), read_only=True)
    sae = con.execute("SELECT sae FROM saes ORDER BY depth DESC LIMIT 1").fetchone()[0]
    top = "SELECT feature FROM features WHERE sae = ? ORDER BY count DESC LIMIT 40"
    busy = [r[0] for r in con.execute(top, [sae]).fetchall()]
    con.close()
    proc = _serve(copy, port, "none")
    base = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {}

    async def visit(page, name: str, path: str, ready: str, when: str) -> None:
        t = time.perf_counter()
        await page.goto(base + path)
        await page.locator(ready).first.wait_for()
        out.setdefault(f"{name}{when}", []).append((time.perf_counter() - t) * 1000)
        # of that, the document and the app's scripts loaded (the rest: the session, the page's
        # script run on the server, sending and drawing its elements)
        loaded = "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
        out.setdefault(f"{name}{when} loaded", []).append(await page.evaluate(loaded))

    async def run() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
            await ctx.add_cookies([{"name": "sae_dashboard_labeler", "value": "bench", "url": base}])
            page = await ctx.new_page()
            page.set_default_timeout(180_000)
            for r in range(repeat + 1):
                when = " (cold)" if r == 0 else ""
                for name, path, ready in EVERY_PAGE:
                    f = busy[r % len(busy)]
                    await visit(page, name, path.format(db=db, sae=sae, f=f), ready, when)
            await page.goto(base + f"/Label_queue?db={db}&sae={sae}")
            for _ in range(repeat):
                await page.get_by_role("heading", name="Next feature").wait_for()
                button = page.get_by_role("button", name="unsure").first
                await button.wait_for()
                t = time.perf_counter()
                await button.click()
                await page.get_by_text("Density was").wait_for()
                out.setdefault("verdict", []).append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await page.get_by_role("button", name="Next →").click()
                await page.get_by_role("heading", name="Next feature").wait_for()
                await page.locator("span.tok").first.wait_for()
                out.setdefault("next", []).append((time.perf_counter() - t) * 1000)
            await browser.close()

    try:
        _run_while_serving(proc, run)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return out


def every_page_main(args) -> None:
    res = every_page_bench(Path(args.data), args.repeat)
    warm = [
        m for k, v in res.items() if "(cold)" not in k and "loaded" not in k and k not in ("verdict", "next") for m in v
    ]
    for k, v in res.items():
        print(f"{k}: p50 {np.median(v):.0f} ms, p95 {np.percentile(v, 95):.0f} ms, max {max(v):.0f} ms over {len(v)}")
    names = [n for n, _, _ in EVERY_PAGE]
    print(
        f"page_p95_ms={np.percentile(warm, 95):.0f} "
        + " ".join(f"{n}_p95_ms={np.percentile(res[n], 95):.0f}" for n in names)
        + f" verdict_p95_ms={np.percentile(res['verdict'], 95):.0f} next_p95_ms={np.percentile(res['next'], 95):.0f}"
    )


def browser_main(args) -> None:
    data = Path(args.data)
    watchers = ["none", "auto"] if args.watcher == "both" else [args.watcher]
    figures = {}
    for watcher in watchers:
        res = browser_bench(data, args.sessions, watcher)
        for when in ("cold", "warm"):
            print(f"watcher={watcher} one session, {when}: " + ", ".join(f"{k} {m:.0f} ms" for k, m in res.pop(when)))
        for n, out in res.items():
            ms = np.array([m for _, m in out])
            by_kind = {k: statistics.median([m for kk, m in out if kk == k]) for k in ("overview", "layer", "feature")}
            p50, p95 = float(np.median(ms)), float(np.percentile(ms, 95))
            print(
                f"watcher={watcher} sessions={n}: time to content p50 {p50:.0f} ms, p95 {p95:.0f} ms "
                f"over {len(ms)} pages; " + ", ".join(f"{k} p50 {v:.0f} ms" for k, v in by_kind.items())
            )
            if watcher == watchers[0]:
                figures[n] = (p50, p95)
    print(" ".join(f"s{n}_p50_ms={p50:.0f} s{n}_p95_ms={p95:.0f}" for n, (p50, p95) in figures.items()))


def pages_main(args) -> None:
    """Each page's own work: the script run of every page through AppTest on a database, with
    cold query caches (first view after a change of file) and warm ones; median of --repeat."""
    from streamlit.testing.v1 import AppTest

    data = Path(args.data)
    os.environ["SAE_DASHBOARD_DATA"] = str(data.resolve())
    db = queries.list_databases()[0]
    path = str(data / db)
    saes = queries.saes(path)
    sae = saes.sort_values("depth")["sae"].iloc[-1]
    feats = queries.features(path, sae)
    f = int(feats.sort_values("count")["feature"].iloc[-1])
    pages = [
        ("overview", "app.py", {}),
        ("layer", "pages/1_Layer.py", {"sae": sae}),
        ("feature", "pages/2_Feature.py", {"sae": sae, "feature": str(f)}),
        ("search", "pages/3_Search.py", {"q": "return"}),
        ("queue", "pages/4_Label_queue.py", {"sae": sae}),
        ("interpretability", "pages/5_Interpretability.py", {}),
    ]
    root = Path(__file__).resolve().parents[1]
    out = {}
    for name, page, params in pages:
        times = {"cold": [], "warm": []}
        for _ in range(args.repeat):
            at = AppTest.from_file(str(root / "app.py"), default_timeout=300)
            if page != "app.py":
                at.switch_page(page)
            for k, v in {"db": db, **params}.items():
                at.query_params[k] = v
            if name == "queue":
                at.session_state["_labeler"] = "bench"
            queries.clear_caches()
            for when in ("cold", "warm"):
                t = time.perf_counter()
                at.run()
                times[when].append(time.perf_counter() - t)
                assert not at.exception, [e.value for e in at.exception]
        out[name] = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"{name}: cold {out[name]['cold']:.0f} ms, warm {out[name]['warm']:.0f} ms (median of {args.repeat})")
    print(" ".join(f"{k}_cold_ms={v['cold']:.0f} {k}_warm_ms={v['warm']:.0f}" for k, v in out.items()))


if __name__ == "__main__":
    if "--pages" in sys.argv:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--pages", action="store_true")
        ap.add_argument("--data", default="data", help="data folder; its newest database is measured")
        ap.add_argument("--repeat", type=int, default=5)
        pages_main(ap.parse_args())
    elif "--browser" in sys.argv:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--browser", action="store_true")
        ap.add_argument("--data", default="data", help="data folder; its newest database is measured")
        ap.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
        ap.add_argument("--watcher", choices=["none", "auto", "both"], default="none")
        ap.add_argument("--every-page", action="store_true", help="every page and verdict saves, one session")
        ap.add_argument("--repeat", type=int, default=10, help="--every-page: rounds over the pages and verdicts")
        args = ap.parse_args()
        every_page_main(args) if args.every_page else browser_main(args)
    else:
        main()
