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
