"""Rate limits: the per-connection token bucket."""

from __future__ import annotations


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
