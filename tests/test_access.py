"""The password check and the server's throttle on wrong guesses."""

from __future__ import annotations

import threading
import time

import pytest

from backend.labels.access import Throttle, password_matches

pytestmark = pytest.mark.unit


def test_password_check_compares_bytes():
    assert password_matches("pässwört-密码", "pässwört-密码")
    assert not password_matches("passwort", "pässwört-密码")
    assert not password_matches("", "x")


def test_wrong_guesses_space_out_and_early_guesses_are_not_compared():
    t = Throttle(base=0.05, cap=0.2)
    assert t.attempt("wrong", "right", "a").ok is False
    early = t.attempt("right", "right", "a")  # inside the delay: refused unchecked, even the right one
    assert not early.ok and 0 < early.wait <= 0.05
    gaps = []
    for _ in range(4):
        time.sleep(t.attempt("x", "right", "a").wait + 0.001)
        gaps.append(t.delay(t._clients["a"].failures))
        assert not t.attempt("wrong", "right", "a").ok
    assert gaps == [0.05, 0.1, 0.2, 0.2]
    time.sleep(0.21)
    assert t.attempt("right", "right", "a").ok and "a" not in t._clients


def _hammer(t: Throttle, sessions: int, seconds: float, address: str = "attacker") -> int:
    """Wrong guesses from `sessions` threads of one address as fast as the throttle answers;
    returns how many were compared."""
    compared = []
    stop = time.monotonic() + seconds

    def guess():
        while time.monotonic() < stop:
            a = t.attempt("wrong", "right", address)
            if not a.wait:
                compared.append(1)
            time.sleep(0.002)

    threads = [threading.Thread(target=guess) for _ in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(compared)


def test_many_sessions_guess_no_faster_than_one_and_a_right_password_gets_in():
    one = _hammer(Throttle(base=0.02, cap=0.1), 1, 1.5)
    t = Throttle(base=0.02, cap=0.1)
    seen = {}

    def colleague():
        time.sleep(0.7)  # the attack is under way
        start = time.perf_counter()
        seen["answer"] = t.attempt("right", "right", "colleague")
        seen["took"] = time.perf_counter() - start

    other = threading.Thread(target=colleague)
    other.start()
    many = _hammer(t, 60, 1.5)
    other.join()
    assert one >= 10 and many <= one + 1, (one, many)
    assert seen["answer"].ok and seen["took"] < 0.05  # from another address: at once, during the attack


def test_wrong_guesses_are_capped_server_wide_but_a_first_guess_is_always_compared():
    t = Throttle(base=0.0, cap=0.0, per_minute=5)
    for i in range(5):
        assert not t.attempt("wrong", "right", f"addr{i}").wait
    assert t.attempt("wrong", "right", "addr0").wait > 50  # a sixth wrong guess this minute, by a failed address
    assert t.attempt("right", "right", "newcomer").ok  # never failed: compared at once
