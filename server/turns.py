"""Logins take turns with the rest of the event loop, so that a storm of them does not hold up the handshakes."""

from __future__ import annotations

import asyncio
from collections import deque

# Seconds of logins (hello in, welcome and user list out) one pass of the event loop does at most. An opening
# handshake takes several passes (accept, the transport, the request, the response), and in a reconnect storm a
# pass that answered every hello it had read took a second: 5,000 handshakes then waited up to 9 s.
LOGIN_BUDGET = 0.02


class LoginTurns:
    """At most `budget` seconds of logins per pass of the event loop; past it, logins wait, in the order they came,
    for a later pass. A login waits only when a pass already spent its budget, which a quiet server never does."""

    def __init__(self, budget: float = LOGIN_BUDGET):
        self.budget = budget
        self._spent = 0.0  # seconds of logins in this pass
        self._cost = 0.001  # seconds a login took lately, on average: how many to let go in a pass
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._next: asyncio.Handle | None = None  # the start of the next pass, once something waits for it

    async def wait(self) -> float:
        """Until this login may go; the seconds it waited (0.0 when it went at once)."""
        if self._spent < self.budget and not self._waiting:
            return 0.0
        loop = asyncio.get_running_loop()
        began, turn = loop.time(), loop.create_future()
        self._waiting.append(turn)
        self._schedule()
        await turn
        return loop.time() - began

    def took(self, seconds: float) -> None:
        """A login that was let go took this long."""
        self._spent += seconds
        self._cost += (seconds - self._cost) / 16
        self._schedule()

    def _schedule(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._pass)

    def _pass(self) -> None:
        """A new pass: its budget is whole again, and as many waiting logins go as it likely holds."""
        self._next, self._spent = None, 0.0
        n = max(1, int(self.budget / self._cost))
        while n and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # cancelled: its task was (the server is stopping)
                turn.set_result(None)
                n -= 1
        if self._waiting:
            self._schedule()
