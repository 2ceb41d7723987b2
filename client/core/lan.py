"""The LAN: which server this app uses, and moving between servers as they come, go and merge, hosting when none."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from server import HubConfig, SignalingServer
from server.bindings import SqliteBindings
from server.discovery import Advertiser, FoundServer, LanView, rank, server_facts
from shared import __version__
from shared.protocol import SERVER_ID_HEADER

from . import events as ev
from .signaling import ConnState, addresses

log = logging.getLogger("callbox.lan")

FIND_TIMEOUT = 1.5  # at start: how long to look for a server before hosting one
LOST_AFTER = 1.5  # a server unreachable this long is given up (one that the user configured never is)
HOST_STEP = 1.5  # survivors with no server to go to host in turn, this far apart (over one mDNS announcement)
EXCLUDE_FOR = 10.0  # a server given up, or found dead, is not chosen again for this long
PROBE_TIMEOUT = 1.0
TICK = 0.2


@dataclass(frozen=True)
class Target:
    """The server in use, and how it was chosen."""

    url: str
    how: str  # configured, discovered, hosted
    server_id: str | None = None
    name: str = ""  # its advertised name, e.g. "Callbox (Alice)"


class Lan:
    """Chooses the server, then keeps the engine on the one server the LAN agrees on.

    - At start: the configured servers (the connection fails over among them, in order); else the best one
      advertised (see server.discovery.rank); else it hosts the embedded server and advertises it.
    - Merge: whenever a better server than the one in use is advertised, it moves there. If the one in use is
      its own, it first hands over: tells its clients to go (a `redirect`), stops advertising, and stops the
      server once nobody is left on it.
    - Failover: a server lost for LOST_AFTER is given up for the best other one advertised; with none, the
      survivors host in the order of their user ids, HOST_STEP apart, so the first one's announcement reaches
      the others before their turn; any that host anyway merge.
    - Configured servers are never left for others, and a redirect from one is not followed.
    A move keeps calls: the engine says hello to the new server with its calls in progress.
    """

    def __init__(self, *, configured: str | list[str], user_id: str, display_name: str, port: int = 8765,
                 host: str = "0.0.0.0", discover: bool = True, interfaces=None, find_timeout: float = FIND_TIMEOUT,
                 data_dir: Path | None = None, pins: dict[str, str] | None = None):
        self.configured = addresses(configured)  # the addresses the user gave, in order; empty: none
        self.data_dir = data_dir  # where a server hosted here keeps who owns which user id (None: in memory)
        # The keys this app pinned for its contacts (user -> key): a server it hosts starts with them bound, so
        # that bindings do not start afresh each time another app becomes the LAN's host.
        self.pins = pins if pins is not None else {}
        self.user_id, self.display_name = user_id, display_name
        self.port, self.host, self.interfaces = port, host, interfaces
        self.find_timeout = find_timeout
        self.view = LanView(interfaces=interfaces) if discover and not self.configured else None
        self.target: Target | None = None
        self.server: SignalingServer | None = None  # ours, while it serves the LAN
        self.advertiser: Advertiser | None = None
        self.retired: list[SignalingServer] = []  # ours, handed over, stopped once empty
        self.engine = None
        self._listeners = ev.Listeners()
        self._task: asyncio.Task | None = None
        self._lost_since: float | None = None
        self._host_at: float | None = None
        self._excluded: dict[str, float] = {}  # server id (or url) -> until when
        self._redirect: ev.Redirected | None = None

    # ------------------------------------------------------------ public

    def subscribe(self, listener) -> None:
        self._listeners.subscribe(listener)

    @property
    def hosting(self) -> bool:
        """This app serves the LAN: its server is the one in use, not handed over."""
        return self.server is not None

    @property
    def found(self) -> list[FoundServer]:
        """The servers advertised now, best first."""
        return self.view.sorted() if self.view is not None else []

    def host_url(self) -> str | None:
        """The address others reach our server at (its first advertised address), while we host."""
        if self.server is None:
            return None
        addresses = self.advertiser.addresses if self.advertiser is not None else []
        host = addresses[0] if addresses else "127.0.0.1"
        return f"ws://{f'[{host}]' if ':' in host else host}:{self.server.port}"

    async def choose(self) -> list[str]:
        """The servers to start with: those configured, else one discovered, else one hosted here. Returns their
        URLs, in the order to try them."""
        if self.configured:
            self.target = Target(self.configured[0], "configured")
            return self.configured
        if self.view is not None:
            await self.view.start()
            await asyncio.sleep(self.find_timeout)
            best = self._best()
            if best is not None:
                log.info("found %d Callbox server(s) on the LAN; using %s (%s)", len(self.view.servers),
                         best.name, best.url)
                self.target = Target(best.url, "discovered", best.server_id, best.name)
                return [best.url]
        await self._host()
        return [self.target.url]

    def attach(self, engine) -> None:
        """Watch this engine's connection and keep it on the LAN's server."""
        self.engine = engine
        engine.subscribe(self._on_engine)
        self._lost_since = time.monotonic()  # until the first connect
        if self.target.how != "configured" and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lan")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.view is not None:
            await self.view.stop()
        if self.advertiser is not None:
            await self.advertiser.stop()
            self.advertiser = None
        for server in [*self.retired, self.server]:
            if server is not None:
                await server.stop()
        self.retired, self.server = [], None

    # ------------------------------------------------------------ events

    def _emit(self, event) -> None:
        self._listeners.emit(event)

    def _on_engine(self, e) -> None:
        if isinstance(e, ev.ConnectionChanged):
            if e.state == ConnState.ONLINE:
                self._lost_since = self._host_at = None
                self._learn_server()
            elif self._lost_since is None:
                self._lost_since = time.monotonic()
        elif isinstance(e, ev.Redirected):
            if self.target.how == "configured":
                log.info("the configured server hands over to %s; staying, as the user chose it", e.url)
            else:
                self._redirect = e  # acted on in the next step, like every move

    def _learn_server(self) -> None:
        """The server just connected to may not be the one expected at that address (a server that restarted,
        or ours that took the port of the one lost): take its id from its welcome."""
        info = self.engine.signaling.server_info
        t = self.target
        if info is not None and info.server_id and info.server_id != t.server_id:
            own = self.server is not None and self.server.hub.config.server_id == info.server_id
            self.target = Target(t.url, "hosted" if own else t.how, info.server_id, t.name)

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._step(time.monotonic())
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad step must not end failover for the rest of the session
                log.exception("LAN step failed")

    async def _step(self, now: float) -> None:
        for server in [s for s in self.retired if s.connections == 0]:
            self.retired.remove(server)
            await server.stop()
            log.info("stopped the handed-over server: nobody is left on it")
        if self._redirect is not None:
            r, self._redirect = self._redirect, None
            if r.server_id is None or r.server_id != self.target.server_id:
                found = self._by_id(r.server_id) or FoundServer(name="", host=urlsplit(r.url).hostname or "",
                                                                 port=urlsplit(r.url).port or 0, url=r.url,
                                                                 properties={"id": r.server_id or ""})
                await self._move(found, "this server handed over to another")
            return
        if self.engine.connection is ConnState.ONLINE:
            await self._merge()
        elif self._lost_since is not None and now - self._lost_since >= LOST_AFTER:
            await self._failover(now)

    async def _merge(self) -> None:
        info = self.engine.signaling.server_info
        best = self._best()
        if best is None or info is None or info.server_id is None or best.server_id == info.server_id:
            return
        if best.rank < rank(info.kind, info.started, info.server_id):
            log.info("%s (%s) outranks the server in use; moving there", best.name, best.url)
            await self._move(best, "two servers were on the LAN")

    async def _failover(self, now: float) -> None:
        if self.target.how == "hosted" and self.server is not None:
            return  # our own server, in this process: only the connection to it is having trouble
        if self._host_at is None:  # the server in use was just lost
            self._exclude(self.target.server_id or self.target.url)
            log.info("lost %s for %.1f s; looking on the LAN", self.target.url, now - self._lost_since)
        best = self._best()
        if best is not None:
            await self._move(best, "the server was lost")
            return
        if self._host_at is None:
            turn = self._host_turn()
            self._host_at = now + turn * HOST_STEP
            log.info("no other server on the LAN; hosting in %.1f s (turn %d)", turn * HOST_STEP, turn)
        if now >= self._host_at:
            await self._host()
            if not self._on(self.target.server_id) and self.engine.signaling.retarget(
                    self.target.url, "moving to the server hosted here"):
                self._emit(ev.Moving(self.target.url, "this computer", "the server was lost"))
            self._lost_since, self._host_at = time.monotonic(), None

    def _host_turn(self) -> int:
        """Our place among the survivors: the users the lost server listed as connected (not its host, nor those
        it had already lost: they are likely gone, and each would cost the others a turn), sorted by id."""
        sig = self.engine.signaling
        host = sig.server_info.host_user if sig.server_info is not None else None
        known = {u for u, info in sig.users.items() if info.status in ("online", "in_call") and u != host}
        known.add(self.user_id)
        return sorted(known).index(self.user_id)

    # ------------------------------------------------------------ moves

    def _best(self) -> FoundServer | None:
        if self.view is None:
            return None
        now = time.monotonic()
        self._excluded = {k: t for k, t in self._excluded.items() if t > now}
        for s in self.view.sorted():
            if (s.server_id or s.url) not in self._excluded:
                return s
        return None

    def _by_id(self, server_id: str | None) -> FoundServer | None:
        if server_id is None or self.view is None:
            return None
        return next((s for s in self.view.servers.values() if s.server_id == server_id), None)

    def _on(self, server_id: str | None) -> bool:
        """Whether the engine is online on that server already, by whatever address (retrying the lost
        server's address, it may have reached ours, which took the same port): moving again would make a new
        session there, and the old one's end would end its calls."""
        info = self.engine.signaling.server_info
        return (server_id is not None and self.engine.connection is ConnState.ONLINE and info is not None
                and info.server_id == server_id)

    def _exclude(self, key: str) -> None:
        self._excluded[key] = time.monotonic() + EXCLUDE_FOR

    async def _move(self, found: FoundServer, why: str) -> bool:
        """Move the engine to `found` if it answers; hand our own server over to it first if we host."""
        there = await server_id_at(found.url)
        if there is None or (found.server_id and there and there != found.server_id):
            log.info("%s (%s) %s; passing it over", found.name or found.url, found.url,
                     "does not answer" if there is None else f"is gone: server {there} answers there now")
            self._exclude(found.server_id or found.url)
            return False
        if self.server is not None and self.server.hub.config.server_id != found.server_id:
            await self._hand_over(found)
        self.target = Target(found.url, "discovered", found.server_id, found.name)
        if not self._on(found.server_id) and self.engine.signaling.retarget(found.url):
            self._emit(ev.Moving(found.url, found.name, why))
        self._lost_since, self._host_at = time.monotonic(), None
        return True

    async def _host(self) -> None:
        config = HubConfig(kind="embedded", host_user=self.user_id)
        server = await start_embedded(self.host, self.port, config, self.data_dir)
        for user, key in self.pins.items():
            if server.hub.bindings.key_of(user) is None:
                server.hub.bindings.bind(user, key)
        self.server = server
        name = f"Callbox ({self.display_name})"
        if self.view is not None:
            advertiser = Advertiser()
            try:
                await advertiser.start(server.port, name=name, version=__version__, facts=server_facts(config),
                                       interfaces=self.interfaces)
                self.advertiser, name = advertiser, advertiser.name or name
            except Exception as exc:  # no multicast here: we still host, others can type our address
                log.warning("could not advertise the embedded server: %s", exc)
        self.target = Target(f"ws://127.0.0.1:{server.port}", "hosted", config.server_id, name)
        self._emit(ev.Hosting(self.host_url()))

    async def _hand_over(self, winner: FoundServer) -> None:
        server, self.server = self.server, None
        server.hand_over(winner.url, winner.server_id)
        self.retired.append(server)
        if self.advertiser is not None:
            advertiser, self.advertiser = self.advertiser, None
            await advertiser.stop()
        self._emit(ev.Hosting(None, f"handed over to {winner.name or winner.url}"))


async def server_id_at(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The id of the Callbox server answering at a ws:// or wss:// URL (from its GET /health), or None when
    nothing answers there in time. An advertisement can outlive its server (a SIGKILL sends no goodbye) while
    another takes its address: only the id tells them apart."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    context = None
    if tls:  # who is there, not whether to trust it: the connection itself verifies the certificate
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or (443 if tls else 80),
                                                           ssl=context)
            try:
                writer.write(f"GET /health HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == SERVER_ID_HEADER.lower():
            return value.strip()
    return ""  # something answers, but it does not say which server it is (an older Callbox, or not one)


async def start_embedded(host: str, port: int, config: HubConfig, data_dir: Path | None = None) -> SignalingServer:
    """Start the embedded server on the preferred port, or on any free one if that is taken."""
    for attempt in (port, 0):
        server = SignalingServer(host, attempt, config=config,
                                 bindings=SqliteBindings(data_dir) if data_dir is not None else None)
        try:
            await server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 0:
                raise
            log.info("port %d is taken; hosting on a free port", port)
            continue
        log.info("hosting the embedded server on %s", server.url)
        return server
    raise AssertionError("unreachable")
