"""Who may write labels: the shared password and the delay that grows after wrong guesses."""

from __future__ import annotations

import hmac
import threading
import time


def password_matches(given: str, configured: str) -> bool:
    """Constant-time comparison of the UTF-8 bytes, so any password, ASCII or not, works."""
    return hmac.compare_digest(given.encode("utf-8"), configured.encode("utf-8"))


class Throttle:
    """A delay before answering a password attempt: 0 at first, then doubling with each wrong
    guess in a row (from `base` up to `cap` seconds), shared by every session of the server,
    since a guesser can open as many sessions as they like. A right password resets it."""

    def __init__(self, base: float = 0.5, cap: float = 8.0, forget_after: float = 600.0):
        self.base, self.cap, self.forget_after = base, cap, forget_after
        self._failures = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def delay(self) -> float:
        with self._lock:
            if time.monotonic() - self._last > self.forget_after:
                self._failures = 0
            return 0.0 if self._failures == 0 else min(self.base * 2 ** (self._failures - 1), self.cap)

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._last = time.monotonic()

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def check(self, given: str, configured: str) -> bool:
        """Wait the current delay, then compare; records the outcome."""
        wait = self.delay()
        if wait:
            time.sleep(wait)
        ok = password_matches(given, configured)
        (self.succeeded if ok else self.failed)()
        return ok
