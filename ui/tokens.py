"""Text for the page: token contexts as escaped HTML, and escaping for markdown. No Streamlit here.

Corpus text, labeler names, descriptions and URL parameters are data, never markup: every
place that shows them goes through `tokens_html`, `escape` or `md`.
"""

from __future__ import annotations

import html
import re

import numpy as np


def _show(tok: str) -> str:
    # Make whitespace visible without letting it break the layout.
    return tok.replace("\n", "↵").replace("\t", "⇥").replace(" ", "\u00a0") or "\u2205"


CSS = """<style>
.ctx { font-family: monospace; line-height: 1.9; margin: 2px 0; }
.ctx .tok { display: inline-block; border-radius: 2px; padding: 0 1px; }
.ctx .tok.excluded { color: #888; border: 1px dashed #bbb; }
.ctx .tok.focus { outline: 1px solid #444; font-weight: 600; }
.ex { border-bottom: 1px solid #e3e3e3; padding: 3px 0; content-visibility: auto; contain-intrinsic-size: auto 120px; }
.ex .meta { font-size: 0.78em; color: #666; }
</style>"""
"""the look of `tokens_html` and `example_rows_html`, shown once with them: rules, not a style on
each of a page's thousands of spans (a Feature page of 80 examples of 64 tokens sent 660 KB).
Rows out of view are not laid out until scrolled to (content-visibility): Plotly measures the
page as it draws, and each measure laid out 5,000 token boxes again (Gemma scale: the page
settles 0.28 s sooner at p50, 16 loads each, interleaved)"""


def tokens_html(
    tokens: list[str], acts: np.ndarray, scale: float, focus: int | None = None, counted: np.ndarray | None = None
) -> str:
    """One context as inline spans shaded by activation / scale; hovering shows the value.
    Positions left out of the statistics (special tokens) show as "not counted", not as 0.
    Drawn by the rules in CSS: inline blocks, so a long context wraps between tokens.

    Every token is HTML-escaped: corpus text is data, never markup.
    """
    scale = float(scale) if scale and scale > 0 else 1.0
    parts = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        title, shown = html.escape(tok, quote=True), html.escape(_show(tok))
        if counted is not None and not counted[i]:
            parts.append(f'<span class="tok excluded" title="{title} : not counted (special token)">{shown}</span>')
            continue
        alpha = f"{min(max(float(a) / scale, 0.0), 1.0):.2f}"
        shade = "" if alpha == "0.00" else f' style="background: rgba(255, 120, 0, {alpha});"'
        parts.append(
            f'<span class="tok{" focus" if i == focus else ""}"{shade} title="{title} : {float(a):.4g}">{shown}</span>'
        )
    return '<div class="ctx">' + "".join(parts) + "</div>"


def example_rows_html(rows, scale_of=None) -> str:
    """Examples one per row, separated, each headed by its value and the token's position; the
    shading scale is `scale_of(row)` (default: the row's own value)."""
    out = []
    for r in rows.itertuples():
        scale = scale_of(r) if scale_of else r.value
        counted = getattr(r, "counted", None)
        more = list(getattr(r, "also", None) or [])
        also = f"; also fires at {', '.join(map(str, more))} in this context" if more else ""
        out.append(
            f'<div class="ex"><div class="meta">{float(r.value):.3g} at position {int(r.pos)} '
            f"(sequence {int(r.seq)}){also}</div>"
            + tokens_html(r.tokens, r.acts, scale, r.pos - r.ctx_start, counted)
            + "</div>"
        )
    return "".join(out)


def one_block(markup: str) -> str:
    """`markup` (escaped HTML of our own) as one raw-HTML block of markdown: line breaks, which
    only corpus text inside attribute values brings, become character references. A blank line
    would end the block, and markdown would read what follows as text to format (math, links)."""
    return markup.replace("\r", "&#13;").replace("\n", "&#10;")


def escape(text: object) -> str:
    return html.escape("" if text is None else str(text))


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~$:])")
_MD_LINE_START = re.compile(r"^(\s*)([-=.]|\d+[.)])")
_AUTOLINK = re.compile(r"(?i)(://|www\.|@)")
_WORD_JOINER = "\u2060"  # invisible; GitHub-flavoured markdown stops linkifying URLs and emails at it


def md(text: object) -> str:
    """`text` as literal characters inside Streamlit markdown (errors, captions, metric labels):
    a link, an image, HTML, an emoji code or a heading in it shows as typed and never renders."""
    s = "" if text is None else str(text).replace("\n", " ")
    s = _AUTOLINK.sub(lambda m: m.group(1)[0] + _WORD_JOINER + m.group(1)[1:], s)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], s)
