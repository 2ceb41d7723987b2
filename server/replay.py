"""Each session's replay log: every message to a user except presence and the welcome, numbered and kept so that a
client that resumes gets exactly what it did not get; and the budget all the logs share."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator


def cost(text: str) -> int:
    """What a kept message counts for in the replay limits: its length plus the bookkeeping around it."""
    return len(text) + 100


class ReplayBudget:
    """The bytes every log holds together, and the most they may (HubConfig.replay_total)."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0


class ReplayLog:
    """The newest messages to one user, at most `limit` of them and `max_bytes`, while the budget allows.

    `sent` numbers every message recorded. While the user has no connection, what comes is `missed`: if one of
    those would have to go to make room, the log has `overflowed` and the session can no longer resume."""

    __slots__ = ("budget", "limit", "max_bytes", "sent", "entries", "bytes", "missed", "missed_bytes", "overflowed")

    def __init__(self, budget: ReplayBudget, limit: int, max_bytes: int):
        self.budget, self.limit, self.max_bytes = budget, limit, max_bytes
        self.sent = 0
        self.entries: deque[tuple[int, str]] = deque()
        self.bytes = 0
        self.missed = 0
        self.missed_bytes = 0
        self.overflowed = False

    def record(self, text: str, *, connected: bool) -> bool:
        """Number and keep a message; False when it overflowed the log now (see the class)."""
        self.sent += 1
        if self.overflowed:
            return True  # ending: nothing will be replayed
        size = cost(text)
        self.entries.append((self.sent, text))
        self.bytes += size
        self.budget.used += size
        if not connected:
            self.missed += 1
            self.missed_bytes += size
        while len(self.entries) > 1 and (len(self.entries) > self.limit or self.bytes > self.max_bytes
                                         or self.budget.used > self.budget.total):
            seq, old = self.entries[0]
            if not connected and seq > self.sent - self.missed:
                self.overflowed = True
                self.clear()
                return False
            self._drop_oldest()
        return True

    def can_resume(self, got: int) -> bool:
        """Whether a client that got the first `got` messages can be given exactly the rest: the log has not
        overflowed, the client claims no more than was sent, and everything after `got` is still kept."""
        if self.overflowed or got > self.sent:
            return False
        return got == self.sent or (bool(self.entries) and self.entries[0][0] <= got + 1)

    def since(self, got: int) -> Iterator[str]:
        """The kept messages after the first `got`, in order."""
        return (text for seq, text in self.entries if seq > got)

    def confirm(self, got: int) -> None:
        """The client has the first `got` messages: they need not be kept."""
        while self.entries and self.entries[0][0] <= got:
            self._drop_oldest()

    def restore(self, entries: list[tuple[int, str]], sent: int) -> None:
        """Take over a log kept elsewhere (by another node of a cluster): `sent` messages so far, of which these
        are the ones not yet confirmed, in order."""
        self.sent = sent
        for seq, text in entries:
            size = cost(text)
            self.entries.append((seq, text))
            self.bytes += size
            self.budget.used += size

    def reconnected(self) -> None:
        self.missed = self.missed_bytes = 0

    def clear(self) -> None:
        self.budget.used -= self.bytes
        self.entries.clear()
        self.bytes = 0

    def _drop_oldest(self) -> None:
        _seq, old = self.entries.popleft()
        size = cost(old)
        self.bytes -= size
        self.budget.used -= size
