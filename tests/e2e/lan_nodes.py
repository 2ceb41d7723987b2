"""Headless Callbox processes in a lab Lan, read through their --events: which server each uses, whom it sees."""

from __future__ import annotations

import asyncio
import sys
import time

from tests.e2e.lanlab import Lan, Proc

SEES = ("online", "in_call")


def callbox(user: str, *args: str) -> list[str]:
    """The argv of `callbox --headless --events` for `user`, with a tone so that no sound card is touched."""
    return [sys.executable, "-m", "client", "--headless", "--events", "--user", user, "--log-level", "INFO",
            "--tone", "440", *args]


class Node:
    """One headless client: its process and what its events say now."""

    def __init__(self, user: str, proc: Proc):
        self.user, self.proc = user, proc

    @classmethod
    async def start(cls, lan: Lan, user: str, *args: str) -> Node:
        return cls(user, await lan.spawn(*callbox(user, *args), name=user))

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def _since_connect(self) -> list[dict]:
        events = [e for e in self.proc.events if isinstance(e, dict)]
        starts = [i for i, e in enumerate(events) if e["event"] in ("connected", "disconnected")]
        return events[starts[-1]:] if starts else []

    @property
    def server(self) -> str | None:
        """The id of the server it is online on now, or None."""
        events = self._since_connect()
        return events[0]["server_id"] if events and events[0]["event"] == "connected" else None

    @property
    def hosting(self) -> bool:
        events = [e for e in self.proc.events if isinstance(e, dict) and e["event"] in ("hosting", "hosting_stopped")]
        return bool(events) and events[-1]["event"] == "hosting" and self.running

    def sees(self) -> dict[str, str]:
        """user -> status, as its events since the last connect tell."""
        return {e["user_id"]: e["status"] for e in self._since_connect() if e["event"] == "presence"}

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.proc.events if isinstance(e, dict) and e["event"] == kind]


def agreement(nodes: list[Node]) -> str | None:
    """The one server every running node is online on, each seeing every other running node; else None."""
    running = [n for n in nodes if n.running]
    servers = {n.server for n in running}
    if len(servers) != 1 or None in servers:
        return None
    users = {n.user for n in running}
    for n in running:
        sees = n.sees()
        if any(sees.get(u) not in SEES for u in users - {n.user}):
            return None
    return servers.pop()


async def one_server(nodes: list[Node], timeout: float, *, other_than: str | None = None) -> tuple[str, float]:
    """Wait until `agreement` (on a server other than `other_than`); return the server id and the
    time.monotonic() when it was seen."""
    deadline = time.monotonic() + timeout
    while (server := agreement(nodes)) in (None, other_than):
        if time.monotonic() > deadline:
            raise AssertionError(f"no single server within {timeout:g} s:\n" + describe(nodes))
        await asyncio.sleep(0.02)
    return server, time.monotonic()


def describe(nodes: list[Node]) -> str:
    return "\n".join(f"  {n.user}: running={n.running} server={n.server} hosting={n.hosting} sees={n.sees()}"
                     for n in nodes)


async def host_of(nodes: list[Node], timeout: float = 5.0) -> Node:
    """The one node that hosts. Its `hosting` event comes once its advertisement is out, which can be after the
    others (and its own client) already reached its server, so this waits a little for it."""
    deadline = time.monotonic() + timeout
    while len(hosts := [n for n in nodes if n.hosting]) != 1:
        if time.monotonic() > deadline:
            raise AssertionError(f"hosts: {[n.user for n in hosts]}\n{describe(nodes)}")
        await asyncio.sleep(0.02)
    return hosts[0]
