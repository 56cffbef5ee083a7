"""Who may write labels: the shared password, and a throttle on wrong guesses kept per server.

A guesser can open as many sessions as they like, so the throttle belongs to the server process,
keyed by the client's address, and it refuses rather than queues: a guess that comes before the
address's next allowed moment is answered "wait N s" without being compared, so sixty sessions
from one address get no more comparisons than one, and no queue of guesses builds up in front
of a colleague's right password. On top, wrong guesses from all addresses together are capped
per minute, except an address's first guess, so a colleague who has not guessed wrong gets in
at once even while others are refused. Behind a reverse proxy every client has the proxy's
address: then the per-address limit is shared, and a right password waits at most `cap` seconds.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass


def password_matches(given: str, configured: str) -> bool:
    """Constant-time comparison of the UTF-8 bytes, so any password, ASCII or not, works."""
    return hmac.compare_digest(given.encode("utf-8"), configured.encode("utf-8"))


@dataclass(frozen=True)
class Answer:
    ok: bool
    wait: float = 0.0
    """> 0: the guess was not compared; try again after this many seconds"""


@dataclass
class _Client:
    failures: int = 0
    next_at: float = 0.0
    last: float = 0.0


class Throttle:
    """After the n-th wrong guess in a row from an address, its next guess is compared no sooner
    than base * 2**(n-1) seconds later (up to `cap`); at most `per_minute` wrong guesses a minute
    are compared for addresses that already failed. An address's record is forgotten after
    `forget_after` seconds without guesses; a right password clears it."""

    def __init__(self, base: float = 0.5, cap: float = 8.0, per_minute: int = 20, forget_after: float = 600.0):
        self.base, self.cap, self.per_minute, self.forget_after = base, cap, per_minute, forget_after
        self._clients: dict[str, _Client] = {}
        self._wrong: deque[float] = deque()  # times of recent wrong guesses, all addresses
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        return 0.0 if failures == 0 else min(self.base * 2 ** (failures - 1), self.cap)

    def attempt(self, given: str, configured: str, client: str = "") -> Answer:
        """Compare `given` if this address may guess now; record the outcome."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, c in self._clients.items() if now - c.last > self.forget_after]:
                del self._clients[key]
            while self._wrong and now - self._wrong[0] > 60:
                self._wrong.popleft()
            c = self._clients.setdefault(client, _Client())
            if now < c.next_at:
                return Answer(False, c.next_at - now)
            if c.failures and len(self._wrong) >= self.per_minute:
                return Answer(False, max(60 - (now - self._wrong[0]), 0.05))
            ok = password_matches(given, configured)
            c.last = now
            if ok:
                del self._clients[client]
                return Answer(True)
            c.failures += 1
            c.next_at = now + self.delay(c.failures)
            self._wrong.append(now)
            return Answer(False)
