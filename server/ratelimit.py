"""Rate limits: the per-connection token bucket, and the per-address backoff after failed logins."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("callbox.hub")


class TokenBucket:
    """Holds `burst` tokens and refills at `rate` a second; each frame takes one. A rate of 0 means no limit."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        """Take one token; False if there is none (the frame is over the limit)."""
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Failures:
    count: int = 0  # failures in the current burst
    last: float = 0.0  # when the last one happened
    blocked_until: float = 0.0


class LoginBackoff:
    """Failed logins per address: the n-th failure in a burst blocks that address for min(2^n x base, cap)
    seconds. A burst ends after `window` seconds without a failure. At most `max_keys` addresses are kept
    (the oldest are forgotten first), so a spray from many addresses cannot grow it without end."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, window: float = 60.0, max_keys: int = 10_000):
        self.base, self.cap, self.window, self.max_keys = base, cap, window, max_keys
        self._by_key: dict[str, _Failures] = {}

    def blocked(self, key: str | None, now: float) -> float:
        """Seconds this address must still wait before a login attempt is looked at (0 if none)."""
        f = self._by_key.get(key) if key is not None else None
        return max(0.0, f.blocked_until - now) if f is not None else 0.0

    def failed(self, key: str | None, now: float) -> float:
        """Record a failure; return how long the address is now blocked."""
        if key is None:
            return 0.0
        f = self._by_key.pop(key, None)  # re-inserted last: the dict stays ordered by last failure
        if f is None or now - f.last > self.window:
            f = _Failures()
        f.count += 1
        f.last = now
        delay = min(self.base * 2 ** f.count, self.cap)
        f.blocked_until = now + delay
        self._by_key[key] = f
        if f.count == 1:
            log.warning("failed login from %s; further failures from that address are throttled "
                        "(up to %g s each) until %g s pass without one", key, self.cap, self.window)
        while len(self._by_key) > self.max_keys:
            del self._by_key[next(iter(self._by_key))]
        return delay

    def forget(self, now: float) -> None:
        """Drop addresses whose burst is over."""
        for key in [k for k, f in self._by_key.items() if now - f.last > self.window]:
            del self._by_key[key]
