"""User text shows as typed (ui.tokens)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_markdown_escaping_shows_text_as_typed():
    from ui.tokens import md

    wj = "\u2060"  # breaks URL and email autolinks, invisibly
    assert md("![p](http://127.0.0.1:8699/p.png)") == "\\!\\[p\\]\\(http\\:" + wj + "//127.0.0.1\\:8699/p.png\\)"
    assert md("www.x.org a@b.c") == f"w{wj}ww.x.org a@{wj}b.c"
    assert md("<img src=x>") == r"\<img src=x\>"
    assert md("- item") == r"\- item" and md("3. item") == r"3\. item" and md("# h") == r"\# h"
    assert md(":smile: $x$") == r"\:smile\: \$x\$"
    assert md("a\nb") == "a b"
    assert md("view='sideways'") == "view='sideways'"


def test_a_context_is_drawn_by_shared_rules_with_only_its_shading_on_each_token():
    """A Feature page holds thousands of token spans: each carries only what differs (its shade,
    its value), the look comes from CSS once, and the focus and special tokens keep theirs."""
    import numpy as np

    from ui.tokens import CSS, tokens_html

    out = tokens_html(["a", "<b>", "c", "[SEP]"], np.array([0.0, 2.0, 1.0, 0.0]), 2.0, focus=1, counted=[1, 1, 1, 0])
    spans = out.split("</span>")[:-1]
    assert spans[0].startswith('<div class="ctx"><span class="tok" title="a : 0">')  # unshaded: no style at all
    assert (
        '<span class="tok focus" style="background: rgba(255, 120, 0, 1.00);"' in spans[1] and "&lt;b&gt;" in spans[1]
    )
    assert 'style="background: rgba(255, 120, 0, 0.50);"' in spans[2]
    assert 'class="tok excluded"' in spans[3] and "style=" not in spans[3] and "not counted" in spans[3]
    rules = (".ctx .tok { display: inline-block;", ".ctx .tok.focus {", ".ctx .tok.excluded {", ".ex .meta {")
    for rule in (*rules, "content-visibility: auto"):  # rows out of view are laid out when scrolled to
        assert rule in CSS


def test_examples_are_one_raw_html_block_of_markdown_whatever_the_corpus_holds():
    """The Feature page draws examples as markdown's raw HTML (ui.feature_view.rows). A blank line
    ends such a block, and markdown would format what follows: corpus text with blank lines,
    math, emphasis or links must stay one block, shown as typed, its tokens' titles intact."""
    from html.parser import HTMLParser

    import numpy as np
    import pandas as pd

    from ui.tokens import example_rows_html, one_block

    toks = ["def", "\n\n", "$x$", "**b**", "\r\n", "[a](http://x)"]
    rows = pd.DataFrame(
        [{"value": 2.0, "pos": 3, "seq": 7, "ctx_start": 0, "tokens": toks, "acts": np.linspace(0, 2, len(toks))}]
    )
    markup = one_block(example_rows_html(rows))
    assert "\n" not in markup and "\r" not in markup

    class Titles(HTMLParser):
        def __init__(self):
            super().__init__()
            self.titles, self.text = [], []

        def handle_starttag(self, tag, attrs):
            self.titles += [v for k, v in attrs if k == "title"]

        def handle_data(self, data):
            self.text.append(data)

    p = Titles()
    p.feed(markup)
    assert [t.rsplit(" : ", 1)[0] for t in p.titles] == toks  # each token's title as in the corpus
    assert "$x$" in p.text and "**b**" in p.text and "[a](http://x)" in p.text  # text, not markup
