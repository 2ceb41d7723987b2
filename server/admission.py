"""Who may open a connection: caps on connections not logged in (overall and per address) and on open files."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable

log = logging.getLogger("callbox.server")

FD_RESERVE = 64  # open files kept free for the listening sockets, logs, TLS and the rest of the process
ACCEPT_BACKLOG = 100  # asyncio accepts up to this many connections in one go before any of them is looked at
# The kernel's queue of connections waiting for accept() (listen(2); Linux caps it at net.core.somaxconn). A
# reconnect storm overflows a short one, and each dropped SYN costs its client a TCP retransmit (1 s, then 3 s...).
# It is set apart from ACCEPT_BACKLOG: a batch of accepts that large would stall the loop on handshakes whose
# clients have given up.
LISTEN_QUEUE = 4096


class EverySecond:
    """Logs a repeated event at most once per `interval`, saying how many more happened in between."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float], interval: float = 1.0):
        self.logger, self.clock, self.interval = logger, clock, interval
        self._last = float("-inf")
        self._skipped = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            self._skipped += 1
            return
        if self._skipped:
            msg += f" ({self._skipped} more since the last such line)"
        self._last, self._skipped = now, 0
        self.logger.log(level, msg, *args)


class Admission:
    """Counts open TCP connections, and those waiting to log in by address, and says which to refuse.

    A connection waits to log in from when its opening handshake is let through until it logs in or closes; one
    still on its way there (accepted, its request not yet read) does not count. So the caps let requests through
    in the order they come: when every accepted connection counted, a storm of 5,000 reconnecting clients always
    had more than 256 accepted, and a server at its default cap refused every one of them, again and again."""

    def __init__(self, *, max_unauthenticated: int, max_per_ip: int, max_connections: int | None,
                 clock: Callable[[], float]):
        self.max_unauthenticated = max_unauthenticated
        self.max_per_ip = max_per_ip
        self.max_connections = max_connections  # None: no cap on open connections
        self.open: dict[Hashable, str] = {}  # connection -> address, while open
        self.pending: set[Hashable] = set()  # let through, and not logged in yet
        self.by_ip: Counter[str] = Counter()  # of the pending
        self.refusals = EverySecond(log, clock)

    def connected(self, conn: Hashable, ip: str) -> bool:
        """A TCP connection was accepted. False: close it now (the server is at its open-connection cap)."""
        if self.max_connections is not None and len(self.open) >= self.max_connections:
            self.refusals(logging.WARNING, "refusing new connections: %d open, the most this process can hold "
                                           "(raise the open-file limit, ulimit -n, to allow more)", len(self.open))
            return False
        self.open[conn] = ip
        return True

    def over_cap(self, conn: Hashable) -> str | None:
        """Why this connection's opening handshake must be refused, or None: it is let through, and waits to log
        in from now on."""
        ip = self.open.get(conn)
        if ip is None or conn in self.pending:
            return None
        if self.max_unauthenticated and len(self.pending) >= self.max_unauthenticated:
            why = f"more than {self.max_unauthenticated} connections are waiting to log in"
        elif self.max_per_ip and self.by_ip[ip] >= self.max_per_ip:
            why = f"more than {self.max_per_ip} connections from {ip} are waiting to log in"
        else:
            self.pending.add(conn)
            self.by_ip[ip] += 1
            return None
        self.refusals(logging.WARNING, "refusing new connections: %s", why)
        return why

    def logged_in(self, conn: Hashable) -> None:
        self._unpend(conn)

    def disconnected(self, conn: Hashable) -> None:
        self._unpend(conn)
        self.open.pop(conn, None)

    def _unpend(self, conn: Hashable) -> None:
        if conn in self.pending:
            self.pending.discard(conn)
            ip = self.open[conn]
            self.by_ip[ip] -= 1
            if not self.by_ip[ip]:
                del self.by_ip[ip]


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard one where allowed; return (soft, hard) after, or None if the
    platform has no such limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass  # e.g. macOS refuses more than OPEN_MAX: keep what we have
    return soft, hard


def connection_cap(soft_limit: int | None) -> int | None:
    """How many connections to hold at most: one burst of accepts on top of them, and FD_RESERVE open files
    for everything else, must still fit under the soft limit."""
    if soft_limit is None or soft_limit <= 0 or soft_limit >= (1 << 30):
        return None
    return max(soft_limit - ACCEPT_BACKLOG - FD_RESERVE, 16)
