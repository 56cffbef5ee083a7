"""The password check."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_password_check_compares_bytes_and_slows_guessing():
    from backend.labels.access import Throttle, password_matches

    assert password_matches("pässwört-密码", "pässwört-密码")
    assert not password_matches("passwort", "pässwört-密码")
    assert not password_matches("", "x")
    t = Throttle(base=0.01, cap=0.04)
    delays = []
    for _ in range(5):
        delays.append(t.delay())
        assert not t.check("wrong", "right")
    assert delays == [0.0, 0.01, 0.02, 0.04, 0.04]
    assert t.check("right", "right") and t.delay() == 0.0
