"""User journeys in a real browser: Debian's Chromium driven by Playwright against `streamlit run`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest

from tests.helpers import repo_root

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (.ci/run installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus_file, build_tiny_db):
    data = tmp_path_factory.mktemp("browser-data")
    build_tiny_db(str(data / "tiny.duckdb"), corpus_file)
    port = _free_port()
    env = dict(os.environ, SAE_DASHBOARD_DATA=str(data), SAE_DASHBOARD_URL=f"http://127.0.0.1:{port}")
    env.pop("SAE_DASHBOARD_PASSWORD", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=repo_root(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(base + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("streamlit did not start")
    yield base, data
    proc.terminate()
    proc.wait(timeout=20)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    return ctx, page


def _no_traceback(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0


def _settled(page) -> None:
    """Wait until the script is idle: a rerun still drawing redraws an input and drops what was typed."""
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for()


RUNS = """() => {
  if (window.__runs === undefined) {
    window.__runs = 0;
    new MutationObserver(records => {
      for (const r of records) if (r.target.getAttribute('data-test-script-state') === 'running') window.__runs++;
    }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state']});
  }
  return window.__runs;
}"""


@contextmanager
def _rerun(page):
    """Wait for the rerun the block's action starts to finish. `_settled` alone can look before the
    rerun begins (a widget's rerun request leaves the state at notRunning until the server answers),
    and mid-rerun the old elements and the new ones are both on the page. On a loaded machine React
    may draw a quick run's start and end as one change, so a run that is never seen running is
    waited for 10 s at most; what the test then asserts still has to hold."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = page.evaluate(RUNS)
    yield
    try:
        page.wait_for_function("n => window.__runs > n", arg=before, timeout=10_000)
    except PlaywrightTimeout:
        pass
    _settled(page)


def _busy_feature(data, sae: str) -> int:
    """A feature that fires often, so that it has examples to show, and whose successor does too."""
    import duckdb

    con = duckdb.connect(str(data / "tiny.duckdb"), read_only=True)
    row = con.execute(
        "SELECT a.feature FROM features a JOIN features b ON b.sae = a.sae AND b.feature = a.feature + 1 "
        "WHERE a.sae = ? AND a.count > 0 AND b.count > 0 ORDER BY a.count DESC LIMIT 1",
        [sae],
    ).fetchone()
    con.close()
    return int(row[0])


def test_overview_to_layer_to_feature_and_shared_link(server, browser):
    base, data = server
    f = _busy_feature(data, "relu-b0")
    ctx, page = _page(browser)
    page.goto(base + "/?db=tiny.duckdb")
    page.get_by_role("heading", name="SAE features: overview").wait_for()
    _no_traceback(page)
    page.get_by_role("link", name="Layer").first.click()  # the sidebar's page list keeps the database
    page.get_by_text("Opened on the SAE that reconstructs best").wait_for()  # (topk-b1 here)
    assert "/Layer" in page.url and "db=tiny.duckdb" in page.url
    page.get_by_label("SAE", exact=True).click()
    page.get_by_role("option", name=re.compile("^relu-b0")).click()
    page.get_by_role("heading", name=re.compile("Layer · relu-b0")).wait_for()
    assert "sae=relu-b0" in page.url
    _no_traceback(page)
    _settled(page)  # the SAE choice's rerun has drawn the form: typing into it now is kept
    page.get_by_label("Open feature #").fill(str(f))  # typed, not committed: the form sends it with the click
    page.get_by_role("button", name="Go to feature").click()
    page.get_by_role("heading", name=re.compile(f"Feature {f} · relu-b0")).wait_for()
    _no_traceback(page)
    page.locator("span.tok").first.wait_for()
    page.get_by_role("button", name="next →").click()
    page.get_by_role("heading", name=re.compile(f"Feature {f + 1} · relu-b0")).wait_for()

    # The copy-link box holds a URL that reproduces the view in a fresh browser.
    page.get_by_text("Link to this view").click()
    link = page.locator("[data-testid='stCode'] code").first.inner_text().strip()
    assert f"feature={f + 1}" in link and "sae=relu-b0" in link and "db=tiny.duckdb" in link
    ctx.close()

    ctx2, fresh = _page(browser)
    fresh.goto(link)
    fresh.get_by_role("heading", name=re.compile(f"Feature {f + 1} · relu-b0")).wait_for()
    fresh.locator("span.tok").first.wait_for()
    _no_traceback(fresh)
    ctx2.close()


def test_bad_url_shows_message_not_traceback(server, browser):
    base, _ = server
    ctx, page = _page(browser)
    page.goto(base + "/Feature?db=tiny.duckdb&sae=relu-b0&feature=banana")
    page.get_by_text("is not a whole number").wait_for()
    _no_traceback(page)
    page.get_by_role("link", name="← Back to the overview").wait_for()
    ctx.close()


def test_two_labelers_see_each_other(server, browser):
    base, _ = server
    sessions = []
    for who, verdict in (("ann", "interpretable"), ("bob", "not interpretable")):
        ctx, page = _page(browser)
        page.goto(base + "/Feature?db=tiny.duckdb&sae=topk-b1&feature=12")
        page.get_by_role("heading", name=re.compile("Feature 12")).wait_for()
        name = page.get_by_label("Your name (for labels)")
        name.fill(who)
        name.press("Enter")
        page.get_by_role("button", name=verdict, exact=True).wait_for()
        assert "labeler" not in page.url  # the name stays in this browser session, never in links
        sessions.append((ctx, page, verdict))
    # both click at (nearly) the same time
    for _, page, verdict in sessions:
        page.get_by_role("button", name=verdict, exact=True).click()
    for _, page, _ in sessions:
        page.get_by_text("Saved:").wait_for()
    for ctx, page, _ in sessions:
        page.reload()
        table = page.locator("table.labels")
        table.wait_for()
        text = table.inner_text()
        assert "ann" in text and "bob" in text
        assert "not interpretable" in text
        ctx.close()


EVIL = "![p](http://127.0.0.1:8699/p.png) [click](http://127.0.0.1:8699/x) <img src=x onerror=alert(1)> <a href=http://127.0.0.1:8699/y>y</a>"


def _nothing_rendered(page) -> None:
    """No image or link that user text could have made is in the DOM."""
    page.wait_for_timeout(300)
    assert page.locator("img[src*='8699'], img[src='x']").count() == 0
    assert page.locator("a[href*='8699']").count() == 0
    _no_traceback(page)


def test_user_text_never_renders(server, browser):
    """A markdown image, a link and HTML, in every URL parameter and every field a user writes:
    shown as text, never rendered, on every page."""
    from urllib.parse import quote

    base, data = server
    e = quote(EVIL)
    ctx, page = _page(browser)
    urls = [
        f"/?db=tiny.duckdb&view={e}",
        f"/?db={e}",
        f"/Layer?db=tiny.duckdb&sae={e}",
        f"/Layer?db=tiny.duckdb&sae=relu-b0&filter={e}",
        f"/Layer?db=tiny.duckdb&sae=relu-b0&sort={e}",
        f"/Layer?db=tiny.duckdb&sae=relu-b0&lo={e}",
        f"/Layer?db=tiny.duckdb&sae=relu-b0&overlay={e}",
        f"/Feature?db=tiny.duckdb&sae=relu-b0&feature={e}",
        f"/Search?db=tiny.duckdb&q={e}",
        f"/Search?db=tiny.duckdb&sae={e}",
        f"/Label_queue?db=tiny.duckdb&sae=relu-b0&mode={e}",
        f"/Label_queue?db=tiny.duckdb&sae=relu-b0&step={e}",
        f"/Interpretability?db=tiny.duckdb&labeler={e}",
    ]
    for url in urls:
        page.goto(base + url)
        page.locator("[data-testid='stAppViewContainer']").wait_for()
        page.wait_for_timeout(800)
        _nothing_rendered(page)

    # a labeler name and a description written by a hostile collaborator, then seen by others
    f = _busy_feature(data, "topk-b1")
    for who in (EVIL[:80], "ann"):
        page.goto(base + f"/Feature?db=tiny.duckdb&sae=topk-b1&feature={f}")
        page.get_by_role("heading", name=re.compile(f"Feature {f}")).wait_for()
        name = page.get_by_label("Your name (for labels)")
        name.fill(who)
        with _rerun(page):
            name.press("Enter")
        desc = page.get_by_label("Description (optional)")
        desc.fill(EVIL)
        with _rerun(page):  # mid-rerun the old form and the new one are both on the page: two buttons of that name
            desc.press("Enter")
        verdict = "not interpretable" if who == "ann" else "interpretable"
        # the last: if a rerun is still drawing, the new form's button (the same widget as the old one's)
        page.get_by_role("button", name=verdict, exact=True).last.click()
        page.get_by_text("Saved:").wait_for()
        _nothing_rendered(page)
    page.reload()
    page.locator("table.labels").wait_for()
    assert "![p](http://127.0.0.1:8699/p.png)" in page.locator("table.labels").inner_text()  # shown as typed
    _nothing_rendered(page)
    for url in ("/Interpretability?db=tiny.duckdb", "/?db=tiny.duckdb", "/Layer?db=tiny.duckdb&sae=topk-b1"):
        page.goto(base + url)
        page.locator("[data-testid='stAppViewContainer']").wait_for()
        page.wait_for_timeout(1500)
        _nothing_rendered(page)
    page.goto(base + "/Interpretability?db=tiny.duckdb")
    page.get_by_text("Fleiss' kappa").wait_for()
    _nothing_rendered(page)
    page.goto(base + "/Search?db=tiny.duckdb")
    box = page.get_by_label("Token or phrase")
    box.fill(EVIL)
    box.press("Enter")
    page.wait_for_timeout(1500)
    _nothing_rendered(page)
    ctx.close()


def test_queue_takes_a_verdict_from_the_keyboard(server, browser):
    base, data = server
    ctx, page = _page(browser)
    page.goto(base + "/Label_queue?db=tiny.duckdb&sae=relu-b0")
    name = page.get_by_label("Your name (for labels)")
    name.fill("kim")
    name.press("Enter")
    page.get_by_role("heading", name="Next feature").wait_for()
    # the shortcut exists once its button is on the page (on a loaded machine, later than the heading)
    page.get_by_role("button", name=re.compile("unsure")).first.wait_for()
    page.get_by_role("heading", name="Label queue").click()  # focus out of the text field
    before = (page.url, page.content(), " ".join(page.locator("[title]").evaluate_all("els => els.map(e => e.title)")))
    page.keyboard.press("3")
    page.get_by_text("Density was").wait_for(timeout=60_000)
    _no_traceback(page)
    from backend import labels
    from backend.store import queries

    mine = labels.all_labels(data / "labels.sqlite")
    assert list(mine[mine["labeler"] == "kim"]["verdict"]) == ["unsure"]
    f = int(mine[mine["labeler"] == "kim"]["feature"].iloc[0])
    page.get_by_role("heading", name=f"Feature {f}").wait_for()  # named only now
    density = f"{queries.feature(str(data / 'tiny.duckdb'), 'relu-b0', f).density:.2e}"
    for where in before:  # the URL, the DOM and every tooltip, read before the verdict
        assert "qf=" not in where and f"feature={f}" not in where and f"Feature {f}" not in where
        assert not re.search(rf"queue_{f}_", where) and density not in where
    ctx.close()


def test_propagation_cell_opens_the_spliced_saes_layer_page(server, browser):
    base, _ = server
    ctx, page = _page(browser)
    page.goto(base + "/Layers?db=tiny.duckdb&spread=resid")
    page.get_by_role("heading", name="How an SAE's error travels through the model").wait_for()
    _no_traceback(page)
    cell = page.locator(".js-plotly-plot .annotation a[*|href*='sae=topk-b1']").first
    cell.wait_for()
    cell.scroll_into_view_if_needed()  # the loss sections above put the heatmap below the first screen
    box = cell.bounding_box()  # a real click where the value is drawn: nothing may sit above it
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_role("heading", name=re.compile("Layer · topk-b1")).wait_for()
    assert "/Layer?" in page.url and "sae=topk-b1" in page.url and "db=tiny.duckdb" in page.url
    _no_traceback(page)
    ctx.close()


@pytest.fixture(scope="module")
def minilm_in_server(server, tmp_path_factory):
    """A MiniLM database (the embedded model, one SAE saved in sae_lens's format) beside the
    tiny one, so the live model can be loaded from what it recorded."""
    from tests.helpers import build_minilm_db

    _, data = server
    build_minilm_db(data / "mini.duckdb", tmp_path_factory.mktemp("live-sae") / "sae-b2", n_tokens=64 * 16)
    return "mini.duckdb"


def test_probe_then_steer_in_the_browser(server, browser, minilm_in_server):
    base, _ = server
    ctx, page = _page(browser)
    page.set_default_timeout(90_000)  # the first probe loads the model into the server
    alerts = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    page.goto(base + f"/Probe?db={minilm_in_server}&sae=sae-b2")
    page.get_by_role("heading", name="Probe: your own text").wait_for()
    box = page.get_by_role("textbox", name="Text")
    box.fill("<script>alert(1)</script> The file could not be opened.")
    box.press("Control+Enter")
    heading = page.get_by_role("heading", name=re.compile(r"Feature \d+, token by token"))
    heading.wait_for()
    _no_traceback(page)
    assert "text=" in page.url  # the text is in the URL: a collaborator opens the same probe
    page.locator("span.tok", has_text="script").first.wait_for()  # shown as text, token by token
    assert not alerts
    f = re.search(r"Feature (\d+)", heading.inner_text()).group(1)
    page.get_by_role("link", name=f"Steer along feature {f} with this text").click()
    page.get_by_role("heading", name="Steer along this feature").wait_for()
    page.get_by_text("Nearest corpus sequences, unsteered").wait_for()
    assert "/Feature?" in page.url and f"feature={f}" in page.url and "prompt=" in page.url
    _no_traceback(page)
    assert not alerts
    ctx.close()


def test_density_clusters_and_verdict_histogram_render(server, browser):
    import duckdb

    from backend.labels import Label, add

    base, data = server
    con = duckdb.connect(str(data / "tiny.duckdb"), read_only=True)
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    con.close()
    add(str(data / "labels.sqlite"), Label("tiny.duckdb", run_id, "relu-b0", 21, "not interpretable", "cara"))
    ctx, page = _page(browser)
    page.goto(base + "/Clusters?db=tiny.duckdb&sae=relu-b0")
    page.get_by_role("heading", name="Feature map").wait_for()
    page.locator(".js-plotly-plot .scatterlayer, .js-plotly-plot canvas").first.wait_for()
    page.get_by_role("heading", name=re.compile("low-density tail")).wait_for()
    page.get_by_role("heading", name=re.compile("Dense features")).wait_for()
    _no_traceback(page)
    page.goto(base + "/Layer?db=tiny.duckdb&sae=relu-b0")
    page.get_by_text("Density by verdict").wait_for()
    page.locator(".js-plotly-plot .legendtext", has_text="not interpretable").first.wait_for()
    _no_traceback(page)
    ctx.close()


def test_a_box_on_the_feature_map_selects_every_feature_inside_it(server, browser):
    """Drawn in the browser, decided on the server: the features a box lists are those whose map
    coordinates in the database lie inside the box as Plotly's axes place it."""
    import urllib.parse

    import duckdb

    base, data = server
    ctx, page = _page(browser)
    page.goto(base + "/Clusters?db=tiny.duckdb&sae=relu-b0")
    page.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()
    _settled(page)
    page.locator(".modebar-btn[data-val='select']").first.click()
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    corners = [(area["x"] + area["width"] * f, area["y"] + area["height"] * g) for f, g in ((0.3, 0.25), (0.75, 0.7))]
    page.mouse.move(*corners[0])
    page.mouse.down()
    page.mouse.move((corners[0][0] + corners[1][0]) / 2, (corners[0][1] + corners[1][1]) / 2, steps=5)
    page.mouse.move(*corners[1], steps=5)
    page.mouse.up()
    page.get_by_text("selected features").wait_for()
    to_data = """([px, py]) => {
        const gd = document.querySelector('.js-plotly-plot'), r = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [xa.p2l(px - r.left - xa._offset), ya.p2l(py - r.top - ya._offset)];
    }"""
    (x0, y0), (x1, y1) = (page.evaluate(to_data, list(c)) for c in corners)
    con = duckdb.connect(str(data / "tiny.duckdb"), read_only=True)
    xy = con.execute("SELECT feature, map_x, map_y FROM feature_diagnostics WHERE sae = 'relu-b0'").df()
    con.close()
    inside = xy[xy["map_x"].between(min(x0, x1), max(x0, x1)) & xy["map_y"].between(min(y0, y1), max(y0, y1))]
    sel = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["sel"][0]
    assert 0 < len(inside) < len(xy) and [int(f) for f in sel.split(",")] == sorted(inside["feature"])[:300]
    _no_traceback(page)
    ctx.close()


def test_markup_in_a_database_never_renders_or_loads_and_its_names_link(
    server, browser, adapter, loaded_saes, sae_dirs, corpus_file
):
    """A database passed around with markup in every architecture and family name, and an SAE
    named as sae_lens ids are (with / = :): nothing of it renders or reaches the outside host,
    on the pages or in their figures, and the heatmap cell of that SAE opens its Layer page."""
    import dataclasses

    import duckdb

    from backend.engine.pipeline import precompute
    from tests.helpers import tiny_config

    base, data = server
    name = "topk/b=1:x"
    renamed = [dataclasses.replace(s, name=name if s.name == "topk-b1" else s.name) for s in loaded_saes]
    db = data / "hostile.duckdb"
    precompute(tiny_config(str(db), corpus_file, sae_dirs), adapter, renamed)
    con = duckdb.connect(str(db))
    con.execute("UPDATE saes SET architecture = ? || architecture", [EVIL + " "])
    for table in ("splice_output", "splice_context"):
        con.execute(f"UPDATE {table} SET family = ? || family", [EVIL + " "])
    con.close()
    ctx, page = _page(browser)
    outside = []
    page.on("request", lambda r: outside.append(r.url) if "8699" in r.url else None)
    try:
        for url in ("/?db=hostile.duckdb", "/Layers?db=hostile.duckdb&spread=resid"):
            page.goto(base + url)
            page.locator(".js-plotly-plot").first.wait_for()
            page.wait_for_timeout(2500)
            _nothing_rendered(page)
            assert page.locator("[*|href*='8699']").count() == 0  # SVG links in legends and titles too
            legends = " ".join(page.locator(".js-plotly-plot .legendtext, .js-plotly-plot .gtitle").all_text_contents())
            assert "<a href=" in legends or "[click](" in legends, legends[:300]  # shown as typed
        cell = page.locator(f".js-plotly-plot .annotation a[*|href*='sae={name}']").first
        cell.scroll_into_view_if_needed()
        box = cell.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.get_by_role("heading", name=f"Layer · {name}").wait_for()
        _no_traceback(page)
        assert not page.locator("[data-testid='stAlert']", has_text="no SAE").count()
        assert outside == []
    finally:
        ctx.close()
        db.unlink()


def test_the_labelers_name_stays_in_this_browser_and_never_travels(server, browser):
    base, _ = server
    ctx, page = _page(browser)
    page.goto(base + "/Feature?db=tiny.duckdb&sae=relu-b0&feature=3")
    name = page.get_by_label("Your name (for labels)")
    name.fill("dora")
    name.press("Enter")
    for _ in range(150):  # the name reaches the cookie once the page's rerun has drawn the setter
        if any(c["name"] == "sae_dashboard_labeler" and c["value"] == "dora" for c in ctx.cookies()):
            break
        page.wait_for_timeout(100)
    assert any(c["name"] == "sae_dashboard_labeler" for c in ctx.cookies()), ctx.cookies()
    assert "dora" not in page.url
    from playwright.sync_api import expect

    page.reload()  # a new session in the same browser
    page.get_by_role("heading", name=re.compile("Feature 3")).wait_for()
    expect(page.get_by_label("Your name (for labels)")).to_have_value("dora", timeout=20_000)
    page.goto(base + "/Label_queue?db=tiny.duckdb&sae=relu-b0")  # a link opened here
    page.get_by_role("heading", name="Label queue").wait_for()
    expect(page.get_by_label("Your name (for labels)")).to_have_value("dora", timeout=20_000)
    url = page.url
    ctx.close()
    other, page = _page(browser)  # a colleague's browser opening the same link
    page.goto(url)
    page.get_by_role("heading", name="Label queue").wait_for()
    page.wait_for_timeout(1000)
    assert page.get_by_label("Your name (for labels)").input_value() == ""
    other.close()


MARGINS = """() => [...document.querySelectorAll('.js-plotly-plot')].map((gd) => {
    const set = gd.layout.margin || {}, drawn = gd._fullLayout._size;
    return {title: (gd.layout.xaxis && gd.layout.xaxis.title && gd.layout.xaxis.title.text) || '',
            set: ['l', 'r', 't', 'b'].map((k) => set[k]), drawn: ['l', 'r', 't', 'b'].map((k) => Math.round(drawn[k]))};
})"""


def test_figures_are_drawn_once_in_the_margins_the_server_set(server, browser):
    """Every figure on the pages people open most starts with margins that already hold its labels,
    legend and colour bar (ui/margins.py), so Plotly's automargin never widens one: widening means
    drawing the figure a second time (0.3 s of a page load)."""
    base, data = server
    f = _busy_feature(data, "relu-b0")
    ctx, page = _page(browser)
    for path, n in [
        ("/?db=tiny.duckdb", 2),
        ("/Layer?db=tiny.duckdb&sae=relu-b0", 1),
        (f"/Feature?db=tiny.duckdb&sae=relu-b0&feature={f}", 3),
        ("/Clusters?db=tiny.duckdb&sae=relu-b0", 2),
    ]:
        page.goto(base + path)
        page.locator("[data-testid='stPlotlyChart'] .main-svg").first.wait_for()
        _settled(page)
        page.wait_for_timeout(1000)  # every figure drawn; a widened one is drawn again after its first
        figures = page.evaluate(MARGINS)
        assert len(figures) >= n, (path, figures)
        for fig in figures:
            assert all(s is not None for s in fig["set"]), (path, fig)
            assert fig["drawn"] == fig["set"], (path, fig)
    ctx.close()
