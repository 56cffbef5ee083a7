"""Streamlit helpers every page shares: URL state, database choice, errors shown as messages.

The URL (`st.query_params`) is the single source of truth for what a view shows. Widgets are
seeded from it whenever the URL says something new, and write back to it on change, so a
copied link reproduces the view in a fresh browser.
"""

from __future__ import annotations

import functools
import math
import os
from urllib.parse import quote, unquote, urlencode

import numpy as np
import streamlit as st

from backend.errors import UserError
from backend.paths import data_dir
from backend.store import queries
from ui.tokens import md

OVERVIEW = "app.py"
LAYER = "pages/1_Layer.py"
FEATURE = "pages/2_Feature.py"
QUEUE = "pages/4_Label_queue.py"
ACROSS = "pages/6_Layers.py"
NAV = [
    (OVERVIEW, "Overview", ":material/dashboard:"),
    (LAYER, "Layer", ":material/bar_chart:"),
    (FEATURE, "Feature", ":material/insights:"),
    ("pages/3_Search.py", "Search", ":material/search:"),
    (QUEUE, "Label queue", ":material/checklist:"),
    ("pages/5_Interpretability.py", "Interpretability", ":material/percent:"),
    (ACROSS, "Across layers", ":material/stacked_line_chart:"),
    ("pages/7_Probe.py", "Probe", ":material/science:"),
    ("pages/8_Clusters.py", "Density clusters", ":material/scatter_plot:"),
]
"""The sidebar's pages (Streamlit's own list is off in .streamlit/config.toml: it names the main
script "app" and drops the database from links)."""
MAX_PARAM_CHARS = 8000
"""URL parameters longer than this are refused before any work (a probe's text is the longest)"""
MAX_PARAM_NAME = 100
MAX_INT = 2**31 - 1


def setup(title: str) -> None:
    # Material icons come with Streamlit's own font: emoji render as empty boxes in Debian's Chromium
    st.set_page_config(page_title=f"{title} · SAE features", page_icon=":material/biotech:", layout="wide")


def page(fn):
    """Run a page body; a UserError becomes a message with a way back, never a traceback."""

    @functools.wraps(fn)
    def run():
        st.session_state["_run"] = st.session_state.get("_run", 0) + 1
        try:
            check_param_sizes()
            navigation()
            fn()
        except UserError as e:
            st.error(md(e))  # messages quote user input: shown as typed, never as markdown
            db = st.query_params.get("db")
            st.page_link(
                OVERVIEW,
                label="← Back to the overview",
                # keep the database only when it is a good one, or the way back fails again
                query_params={"db": db} if db in queries.list_databases() else None,
            )

    return run


def navigation() -> None:
    names = queries.list_databases()
    db = st.query_params.get("db") or (names[0] if names else None)  # the default database is shown
    keep = {"db": db} if db and db in names else None
    for path, label, icon in NAV:
        st.sidebar.page_link(path, label=label, icon=icon, query_params=keep)


def chart(fig, **kw):
    """The one way pages draw a Plotly figure: its text escaped first (figures.plain)."""
    from ui.figures import plain

    return st.plotly_chart(plain(fig), **kw)


def once_per_run(what: str) -> bool:
    """True the first time `what` is asked for in this run of the page, False after."""
    key = f"_once_{what}"
    run = st.session_state.get("_run", 0)
    if st.session_state.get(key) == run:
        return False
    st.session_state[key] = run
    return True


# ---- URL parameters ----


def check_param_sizes() -> None:
    for name in list(st.query_params):
        value = st.query_params.get(name) or ""
        if len(value) > MAX_PARAM_CHARS or len(name) > MAX_PARAM_NAME:
            for k in list(st.query_params):
                st.query_params.pop(k, None)
            if len(name) > MAX_PARAM_NAME:
                raise UserError(
                    f"a URL parameter's name ({name[:40]!r}...) is {len(name):,} characters long; "
                    f"the limit is {MAX_PARAM_NAME}"
                )
            raise UserError(
                f"URL parameter {name!r} is {len(value):,} characters long; the limit is {MAX_PARAM_CHARS:,}"
            )


def param(name: str) -> str | None:
    v = st.query_params.get(name)
    return v if v not in (None, "") else None


def int_param(name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    raw = param(name)
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        raise UserError(f"URL parameter {name}={raw!r} is not a whole number") from None
    hi = MAX_INT if hi is None else hi
    if (lo is not None and v < lo) or v > hi:
        raise UserError(f"URL parameter {name}={v} is out of range ({lo} .. {hi})")
    return v


def float_param(name: str) -> float | None:
    raw = param(name)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise UserError(f"URL parameter {name}={raw!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"URL parameter {name}={raw!r} is not a finite number")
    return v


def set_params(**values) -> None:
    """Write values into the URL; None removes a parameter."""
    for k, v in values.items():
        if v is None:
            st.query_params.pop(k, None)
        else:
            st.query_params[k] = str(v)


def seed(key: str, name: str, value) -> None:
    """Put the URL's value into a widget's state when the URL changed since we last looked."""
    marker = f"_url_{key}"
    raw = param(name)
    if st.session_state.get(marker, "\0") != raw or key not in st.session_state:
        st.session_state[marker] = raw
        st.session_state[key] = value


def choice(name: str, options, label: str, default: str, widget: str = "radio", container=None, **kw) -> str:
    """A widget choosing among `options` (a dict of value -> shown text, or a list), bound to the
    URL parameter `name` both ways; a value the URL gives that is not an option is a message."""
    value = param(name) or default
    if value not in options:
        raise UserError(f"URL parameter {name}={value!r}: use one of {', '.join(options)}")
    key = f"w_{name}"
    seed(key, name, value)
    shown = options.get if isinstance(options, dict) else str
    draw = getattr(container or st, widget)
    if widget == "radio":
        kw.setdefault("horizontal", True)
    draw(label, list(options), key=key, format_func=shown, on_change=to_url, args=(key, name), **kw)
    return st.session_state[key]


def to_url(key: str, name: str, fmt=str) -> None:
    """on_change callback: the widget's new value goes into the URL."""
    v = st.session_state[key]
    raw = None if v is None else fmt(v)
    st.session_state[f"_url_{key}"] = raw
    set_params(**{name: raw})


# ---- database and SAE choice ----


def database() -> str:
    """The database named in the URL (checked), or the newest in the data folder."""
    names = queries.list_databases()
    if not names and param("db") is None:
        raise UserError(f"no feature database in {data_dir()}/ yet: run `python -m backend demo` to build one")
    name = param("db") or names[0]
    path = queries.resolve_database(name)
    names = names if name in names else [name, *names]
    if param("db") is None:
        set_params(db=name)
    seed("w_db", "db", name)
    st.sidebar.selectbox("Database", names, key="w_db", on_change=_switch_db)
    return path


def _switch_db() -> None:
    db = st.session_state["w_db"]
    st.session_state["_url_w_db"] = db
    st.query_params.clear()
    st.query_params["db"] = db


def best_reconstructing(path: str) -> str:
    """The SAE with the highest explained variance (the first in the file on ties): where a page
    that shows one SAE opens when the URL names none."""
    df = queries.saes(path)
    return str(df.loc[df["explained_variance"].fillna(-np.inf).idxmax(), "sae"])


def choose_sae(
    path: str,
    key: str = "w_sae",
    name: str = "sae",
    label: str = "SAE",
    optional: bool = False,
    container=None,
    default: str | None = None,
) -> str | None:
    """An SAE of the database bound to the URL parameter `name`; without one, `default` (else
    the first in the file)."""
    df = queries.saes(path)
    if df.empty:
        raise UserError("this database has no complete SAE yet (is its run still going? see `python -m backend info`)")
    options = list(df["sae"])
    labels = {r.sae: f"{r.sae} · {r.architecture} · {r.hook}" for r in df.itertuples()}
    current = param(name)
    if current is not None and current not in options:
        raise UserError(f"no SAE {current!r} in this database")
    if optional:
        options = [None] + options
        labels[None] = "—"
    elif current is None:
        current = default if default in options else options[0]
        set_params(**{name: current})
    seed(key, name, current)
    (container or st.sidebar).selectbox(
        label, options, key=key, format_func=lambda s: labels[s], on_change=to_url, args=(key, name)
    )
    return st.session_state[key]


def link_params(**extra) -> dict:
    """Parameters for a link to another view: the database and what the view needs. Never the
    labeler's name, which belongs to one browser session, not to a view."""
    params = {"db": param("db")}
    params.update(extra)
    return {k: str(v) for k, v in params.items() if v is not None}


def url(page: str, **params) -> str:
    """Relative link to a page (its URL path, e.g. "Feature"), for table link columns."""
    return f"{page}?{urlencode(link_params(**params))}"


_FIGURE_SAFE = "/:=@$,;?!*()~"
"""characters a link inside a figure keeps literal: Plotly passes every href through
encodeURI(decodeURI(href)), which turns an escape of one of them (%3D, %2F, ...) into %253D"""


def figure_url(page: str, **params) -> str | None:
    """A relative link for markup inside a Plotly figure, built so that Plotly's own re-encoding
    gives back exactly these parameters; None where no such link exists (a value holding &, +
    or #, which must be escaped in a query and whose escapes Plotly would double)."""
    values = link_params(**params)
    if any(c in v for v in values.values() for c in "&+#"):
        return None
    return f"{page}?" + "&".join(f"{quote(k, safe='')}={quote(v, safe=_FIGURE_SAFE)}" for k, v in values.items())


def feature_url(sae: str, feature: int) -> str:
    return url("Feature", sae=sae, feature=int(feature))


def feature_urls(sae: str, features) -> list[str]:
    """feature_url of each feature, for a table's link column: the shared part is encoded once
    (a wide SAE's dense features are ten thousand rows)."""
    head = url("Feature", sae=sae)
    return [f"{head}&feature={int(f)}" for f in features]


def copy_link() -> None:
    """Show this view's URL; the code block has a copy button."""
    base = ""
    try:
        base = (st.context.url or "").split("?")[0]
    except Exception:  # noqa: BLE001 - no browser context (tests)
        base = ""
    if not base:
        host = os.environ.get("SAE_DASHBOARD_URL", "http://localhost:8501")
        base = host.rstrip("/") + "/"
    query = urlencode({k: st.query_params.get(k) for k in st.query_params})
    # drawn only while open: the code box's copy button comes with a 1.5 MB syntax highlighter that
    # took ~0.3 s of every full page load to run, for a box that starts closed
    box = st.sidebar.expander("Link to this view", icon=":material/link:", key="w_link_open", on_change="rerun")
    if box.open:
        box.code(f"{base}?{query}" if query else base, language=None)


LABELER_COOKIE = "sae_dashboard_labeler"
"""the cookie that keeps the labeler's name in this browser (a year; never in a link)"""


def labeler() -> str | None:
    """The labeler's name: typed once per browser, kept in this browser's cookie and the
    session, never in a URL, so a shared link never makes a colleague label under someone
    else's name, and a reload or a link opened here keeps it."""
    st.query_params.pop("labeler", None)  # older links carried it: drop it, never use it
    if "w_labeler" not in st.session_state:  # widget state may not survive a page change; this does
        st.session_state["w_labeler"] = st.session_state.get("_labeler") or _cookie_name()
    name = st.sidebar.text_input("Your name (for labels)", key="w_labeler", max_chars=80, on_change=_keep_labeler)
    st.sidebar.caption("Kept in this browser (a cookie), never in links you share.")
    st.session_state["_labeler"] = name
    if st.session_state.pop("_labeler_to_cookie", False):
        _set_cookie(name or "")
    return (name or "").strip() or None


def _keep_labeler() -> None:
    st.session_state["_labeler"] = st.session_state["w_labeler"]
    st.session_state["_labeler_to_cookie"] = True


def _cookie_name() -> str:
    try:
        raw = st.context.cookies.get(LABELER_COOKIE)
    except Exception:  # noqa: BLE001 - no browser context
        return ""
    return unquote(raw)[:80] if isinstance(raw, str) else ""


def _set_cookie(name: str) -> None:
    """The name into this browser's cookie, from a zero-height component in the sidebar (its
    frame shares the app's origin); an empty name clears it."""
    import json

    import streamlit.components.v1 as components

    age = 365 * 24 * 3600 if name else 0
    with st.sidebar:
        components.html(
            "<script>document.cookie = "
            f"{json.dumps(LABELER_COOKIE + '=')} + encodeURIComponent({json.dumps(name)}) + "
            f"'; path=/; max-age={age}; SameSite=Strict';</script>",
            height=0,
        )
