"""The websockets transport around the hub: sockets, keepalive, deadlines, and the one place that writes."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import time
import weakref
from collections.abc import Iterable
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from shared import __version__
from shared.protocol import MAX_MESSAGE_BYTES, NONCE_HEADER, SERVER_ID_HEADER

from .admission import ACCEPT_BACKLOG, LISTEN_QUEUE, Admission, EverySecond, connection_cap, raise_open_file_limit
from .bindings import Bindings
from .hub import Action, Broadcast, Close, Hub, HubConfig, Send
from .turns import LoginTurns

log = logging.getLogger("callbox.server")

# Frames up to this size reach the hub, which answers anything over MAX_MESSAGE_BYTES with an error
# before closing with 1009; past it the websockets library closes with 1009 by itself.
READ_LIMIT = 16 * MAX_MESSAGE_BYTES
# A peer that stops reading while messages pile up for it is cut once this much waits in its write buffer;
# it resumes like any dropped client and gets what it missed from the replay buffer.
WRITE_LIMIT = 1 << 20
# Until a hello succeeds a connection gets only small frames through, and may leave only a little unread:
# a hello is small, and so is what the server says before login (an error; the welcome counts as after).
PRE_LOGIN_READ_LIMIT = 8 * 1024
# Past this much unread, channel messages are held back from a connection (its user later gets channel_gap);
# call signaling still goes out. Below the low mark again, it gets them again.
CONGESTED_HIGH, CONGESTED_LOW = 256 * 1024, 64 * 1024
PRE_LOGIN_WRITE_LIMIT = 64 * 1024
CLOSE_TIMEOUT = 2.0  # seconds a closing handshake may take before the TCP connection is dropped


class _Connection(ServerConnection):
    """A websockets connection whose every write, pongs and pings included, goes through `send_data`: past
    its unread limit the TCP connection is aborted there, whoever wrote. Before login it takes small frames."""

    def __init__(self, owner: SignalingServer, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.write_cap = PRE_LOGIN_WRITE_LIMIT
        self.protocol.max_message_size = PRE_LOGIN_READ_LIMIT
        self.hello_by = 0.0  # the loop time by which a hello must have succeeded, with a hello timeout

    def logged_in(self) -> None:
        self.write_cap = WRITE_LIMIT
        self.protocol.max_message_size = READ_LIMIT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.owner._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.owner._disconnected(self)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.owner.hub.congested(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.owner._drained(self)

    def send_data(self) -> None:
        if self.transport.is_closing():
            self.protocol.data_to_send()  # aborted: what is left has nowhere to go
            return
        super().send_data()
        if self.transport.get_write_buffer_size() > self.write_cap:
            self.owner._dropped.setdefault(self, f"more than {self.write_cap} bytes left unread (connection dropped)")
            self.transport.abort()


class SignalingServer:
    """A Callbox signaling server. Embed it with `await start()` / `await stop()`, or run `callbox-server`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: HubConfig | None = None,
        ping_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        compression: bool = False,
        bindings: Bindings | None = None,
        max_connections: int | None = None,
        allow_origins: Iterable[str] = (),
        redis: str | None = None,
    ):
        self.host = host
        self.requested_port = port
        self.hub = Hub(config or HubConfig(), bindings=bindings)
        self.ping_timeout = ping_timeout
        self.ssl_context = ssl_context
        self.compression = compression
        self._server: Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing: set[asyncio.Task] = set()
        self._dropped: dict[ServerConnection, str] = {}  # connections we aborted, and why
        # Sent in the handshake, until the hub has it (weak: a handshake may fail after its response).
        self._nonces: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
        # Open connections at most; None: as many as the open-file limit allows (see start()).
        self.max_connections = max_connections
        # Web pages allowed to connect (their Origin header); "*" for any. Requests without Origin (native
        # clients) are always allowed; any other Origin is refused with 403, so that a web page the user
        # happens to open cannot talk to a local server.
        self.allow_origins = tuple(allow_origins)
        self.admission: Admission | None = None
        self._hello_timers: dict[ServerConnection, asyncio.TimerHandle] = {}
        self._turns = LoginTurns()
        self._old_handler = None
        self.cluster = None  # with `redis` (a redis:// URL): this server is one node of a cluster (server.cluster)
        if redis:
            from .cluster import Cluster  # only here: without --redis, redis-py need not be installed

            self.hub.config.cluster = True
            self.cluster = Cluster(redis, self.hub, self._apply)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.hub.config
        loop = asyncio.get_running_loop()
        limits = raise_open_file_limit()
        cap = self.max_connections if self.max_connections is not None else connection_cap(limits and limits[0])
        self.admission = Admission(max_unauthenticated=cfg.max_unauthenticated,
                                   max_per_ip=cfg.max_unauthenticated_per_ip, max_connections=cap, clock=loop.time)
        self._quiet_accept_errors(loop)
        self._server = await serve(
            self._handle,
            self.host,
            self.requested_port,
            ssl=self.ssl_context,
            max_size=READ_LIMIT,
            ping_interval=None,  # our own keepalive below notices a dead peer without waiting for a close handshake
            compression="deflate" if self.compression else None,
            open_timeout=cfg.hello_timeout or 10.0,
            close_timeout=CLOSE_TIMEOUT,
            process_request=self._process_request,
            process_response=self._give_nonce,
            server_header=f"callbox/{__version__}",
            origins=None if "*" in self.allow_origins else [None, *self.allow_origins],
            create_connection=lambda *args, **kwargs: _Connection(self, *args, **kwargs),
            backlog=ACCEPT_BACKLOG,
            write_limit=(CONGESTED_HIGH, CONGESTED_LOW),
        )
        for listening in self._server.sockets:  # the kernel's queue; asyncio still accepts ACCEPT_BACKLOG at a time
            with socket.socket(fileno=os.dup(listening.fileno())) as sock:
                sock.listen(LISTEN_QUEUE)
        log.info("callbox-server %s listening on %s", __version__, self.url)
        if self.cluster is not None:
            await self.cluster.start(self.url)
            log.info("node %s of the cluster on %s", self.hub.config.server_id, self.cluster.url)

    async def stop(self) -> None:
        """Close every connection with 1001 (going away) and stop listening."""
        if self._server is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._server = None
        if self.cluster is not None:
            await self.cluster.stop()
        self.hub.bindings.close()
        asyncio.get_running_loop().set_exception_handler(self._old_handler)
        log.info("callbox-server stopped")

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def hand_over(self, url: str, server_id: str | None = None) -> None:
        """Send every client to the server at `url`; clients that log in later are sent there too."""
        log.info("handing over to %s", url)
        self._apply(self.hub.hand_over(url, server_id))

    @property
    def connections(self) -> int:
        """Open connections, logged in or not."""
        return len(self.hub.conns)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # ------------------------------------------------------------ connections

    async def _handle(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        peer = _addr(ws)
        log.info("connect %s", peer)
        addr = ws.remote_address
        self._apply(self.hub.open(ws, loop.time(), addr[0] if isinstance(addr, tuple) and addr else None,
                                  self._nonces.pop(ws, "")))
        if self.hub.config.hello_timeout:
            ws.hello_by = loop.time() + self.hub.config.hello_timeout
            self._hello_timers[ws] = loop.call_at(ws.hello_by, self._hello_due, ws)
        keepalive = asyncio.create_task(self._keepalive(ws)) if self.hub.config.ping_interval else None
        try:
            async for raw in ws:
                if self.cluster is not None and ws in self.hub.conns and self.hub.conns[ws].user is None:
                    try:
                        await self.cluster.before_hello(raw)  # the user's binding; its session, if kept elsewhere
                    except Exception:  # a record in Redis that is not ours: the hello is answered all the same
                        log.exception("could not look up %s in the cluster", peer)
                login = ws in self.hub.conns and self.hub.conns[ws].user is None
                if login:
                    await self._take_turn(ws)
                began = time.perf_counter()
                try:
                    actions = self.hub.receive(ws, raw, loop.time())
                except Exception:  # a bug in the hub must not take the connection down with it
                    log.exception("hub failed on a message from %s", peer)
                    continue
                if ws in self._hello_timers and self.hub.conns[ws].user is not None:
                    self._logged_in(ws)  # before the welcome is written: it may be large
                self._apply(actions)
                if login:
                    self._turns.took(time.perf_counter() - began)
                # An idle connection must not pin its last frame and the hub's answer to it: after a hello
                # that is the welcome listing every user, which made memory grow with the square of users.
                del actions, raw
        except ConnectionClosed:
            pass  # a vanished peer is normal life; the reason is logged below
        finally:
            if keepalive is not None:
                keepalive.cancel()
            timer = self._hello_timers.pop(ws, None)
            if timer is not None:
                timer.cancel()
            user = self.hub.conns[ws].user if ws in self.hub.conns else None
            self._apply(self.hub.connection_lost(ws, loop.time()))
            why = self._dropped.pop(ws, None) or _why(ws)
            log.info("disconnect %s%s: %s", peer, f" user={user}" if user else "", why)

    async def _take_turn(self, ws: ServerConnection) -> None:
        """A hello waits its turn (server.turns) in a storm of logins; its connection's deadline for a successful
        hello does not count the wait, which is the server's and not the client's."""
        timer = self._hello_timers.get(ws)
        if timer is not None:
            timer.cancel()  # a handle, not always a TimerHandle: qasync's have no when()
        waited = await self._turns.wait()
        if timer is not None:
            ws.hello_by += waited
            self._hello_timers[ws] = asyncio.get_running_loop().call_at(ws.hello_by, self._hello_due, ws)

    async def _keepalive(self, ws: ServerConnection) -> None:
        """Ping every ping_interval; a pong later than ping_timeout means a dead peer. Its TCP connection is
        aborted at once, so the hub hears of it within interval + timeout rather than after a close handshake
        that a vanished peer will never finish."""
        interval, timeout = self.hub.config.ping_interval, self.ping_timeout
        async def ping_pong() -> None:
            pong = await ws.ping()  # this waits too when the peer stopped reading and our buffer is full
            await pong

        try:
            while True:
                await asyncio.sleep(interval)
                await asyncio.wait_for(ping_pong(), timeout or None)
        except TimeoutError:
            self._dropped[ws] = "no pong within the ping timeout (connection dropped)"
            ws.transport.abort()
        except ConnectionClosed:
            pass

    def _apply(self, actions: list[Action]) -> None:
        if self.cluster is None:
            self._act(actions)
        else:  # what goes to Redis now; what goes to sockets once it is there (server.cluster: exactly once)
            local = [a for a in actions if isinstance(a, (Send, Broadcast, Close))]
            for a in actions:
                if not isinstance(a, (Send, Broadcast, Close)):
                    self.cluster.send(a)
            if local:
                self.cluster.defer(lambda: self._act(local))
        self._schedule()

    def _act(self, actions: Iterable[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._deliver((a.conn,), a.text)
            elif isinstance(a, Broadcast):
                self._deliver(a.conns, a.text)
            elif isinstance(a, Close):
                task = asyncio.create_task(a.conn.close(a.code, a.reason))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _deliver(self, conns: Iterable[ServerConnection], text: str) -> None:
        """Every message to a user goes through here. It never waits for a slow peer, and a connection that is
        closing or closed is skipped: its handler's exit tells the hub, which is the one place that cleans up.
        The write itself, and the drop of a peer whose unread backlog passed its limit, is _Connection's."""
        broadcast(conns, text)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a newcomer past the caps on connections waiting to log in (503), and answer a plain HTTP
        GET /health with 200, so self-hosters can point a monitor at the server. It names the server
        (SERVER_ID_HEADER), so an app can tell it from one that died at the same address."""
        if request.path == "/health" and "upgrade" not in request.headers.get("Connection", "").lower():
            response = connection.respond(HTTPStatus.OK, "ok\n")
            response.headers[SERVER_ID_HEADER] = self.hub.config.server_id
            return response
        why = self.admission.over_cap(connection)
        if why is not None:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {why}; try again later\n")
        return None

    def _give_nonce(self, connection: ServerConnection, request: Request, response: Response) -> Response:
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            self._nonces[connection] = response.headers[NONCE_HEADER] = secrets.token_urlsafe(18)
        return response

    # ------------------------------------------------------------ admission

    def _connected(self, ws: _Connection) -> None:
        addr = ws.transport.get_extra_info("peername")
        ip = addr[0] if isinstance(addr, tuple) and addr else str(addr)
        if not self.admission.connected(ws, ip):
            ws.transport.abort()

    def _disconnected(self, ws: _Connection) -> None:
        self.admission.disconnected(ws)

    def _logged_in(self, ws: _Connection) -> None:
        self._hello_timers.pop(ws).cancel()
        self.admission.logged_in(ws)
        ws.logged_in()

    def _drained(self, ws: ServerConnection) -> None:
        if not ws.transport.is_closing():
            self._apply(self.hub.drained(ws, asyncio.get_running_loop().time()))

    def _hello_due(self, ws: ServerConnection) -> None:
        self._hello_timers.pop(ws, None)
        self._apply(self.hub.hello_due(ws, asyncio.get_running_loop().time()))

    def _quiet_accept_errors(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio logs a traceback for every failed accept() when the process runs out of open files, up to
        a hundred a try: log one line a second instead. Other errors go to the handler that was there."""
        self._old_handler = old = loop.get_exception_handler()
        throttled = EverySecond(log, loop.time)

        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            if context.get("message") == "socket.accept() out of system resource":
                throttled(logging.WARNING, "cannot accept connections: %s", context.get("exception"))
            elif old is not None:
                old(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    # ------------------------------------------------------------ deadlines

    def _schedule(self) -> None:
        at = self.hub.next_deadline()  # cheap: the hub keeps its deadlines in a heap
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(max(at, loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._apply(self.hub.expire(asyncio.get_running_loop().time()))




def _addr(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _why(ws: ServerConnection) -> str:
    rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if rcvd is None and sent is None:
        return "connection lost (no close frame)"
    if rcvd is None or (sent is not None and not ws.protocol.close_rcvd_then_sent):
        return f"closed by server: {sent.code} {sent.reason}".rstrip()
    return f"closed by peer: {rcvd.code} {rcvd.reason}".rstrip()
