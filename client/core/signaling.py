"""The signaling client: one WebSocket to a server, reconnect with backoff over an ordered list of addresses,
resume, an ordered outbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import random
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from shared import protocol as p
from shared.names import display_name

log = logging.getLogger("callbox.signaling")


class ConnState(StrEnum):
    CONNECTING = "connecting"  # first attempt
    ONLINE = "online"
    RECONNECTING = "reconnecting"  # lost it; retrying on its own
    OFFLINE = "offline"  # stopped, or refused for good (wrong token, name taken)


class Refused(Exception):
    """The server answered hello with an error that a retry may fix."""


class OutboxFull(Exception):
    """More messages were sent while disconnected than the outbox holds."""


# Errors from the server that retrying cannot fix.
ACK_EVERY = 100  # messages received between acks, at most (docs/protocol.md §2.3) ...
ACK_AFTER = 2.0  # ... or seconds after a message, when fewer came
FATAL = {p.AUTH_FAILED, p.NAME_TAKEN, p.UNSUPPORTED_PROTOCOL, p.KEY_MISMATCH, p.BAD_PROOF}
# Opening a connection has two deadlines, not websockets' one. TCP must connect within CONNECT_TIMEOUT, or the
# address is taken for dead and the next is tried. Once it has, the server is alive, and TLS and the opening
# handshake get UPGRADE_TIMEOUT more: in a reconnect storm a server answers thousands of them at once, and a
# client that gives up after a few seconds throws away the work done for it and comes back to ask again.
CONNECT_TIMEOUT, UPGRADE_TIMEOUT = 5.0, 10.0


def backoff(attempt: int, *, first: float = 0.5, cap: float = 5.0) -> float:
    """Delay before retry number `attempt` (0-based): at most `first` at first, doubling, capped, with jitter."""
    # The exponent is bounded: 2**1024 does not fit a float, and a server down for hours gets that many attempts.
    return min(cap, first * 2 ** min(attempt, 64)) * random.uniform(0.5, 1.0)


async def open_connection(url: str, *, create_connection: type[ClientConnection] = ClientConnection,
                          **kwargs) -> ClientConnection:
    """websockets' connect(url, **kwargs), with CONNECT_TIMEOUT for TCP and UPGRADE_TIMEOUT more, from when TCP
    is up, for TLS and the opening handshake. TimeoutError past either."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT) as deadline:
        def connected(*args, **kw) -> ClientConnection:  # asyncio makes the protocol once the socket connects
            deadline.reschedule(loop.time() + UPGRADE_TIMEOUT)
            return create_connection(*args, **kw)

        return await connect(url, open_timeout=None, create_connection=connected, **kwargs)


def addresses(spec: str | Iterable[str]) -> list[str]:
    """The server addresses in `spec`, in order: a list, or one string with them separated by commas (as --server
    takes them) or whitespace. Empty items, as stray commas leave, are dropped."""
    items = re.split(r"[,\s]+", spec) if isinstance(spec, str) else spec
    return [a.strip() for a in items if a.strip()]


def explain(exc: BaseException, url: str) -> str:
    """A sentence a person understands for why a connection could not be made."""
    if isinstance(exc, InvalidURI):
        return f"'{url}' is not a ws:// or wss:// address"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS problem talking to the server ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError) or errno.ECONNREFUSED in _folded(exc):
        return "the server refused the connection; is it running on that port?"
    if isinstance(exc, socket.gaierror):
        return "the server's address was not found"
    if isinstance(exc, TimeoutError):
        return "the server did not answer in time"
    if isinstance(exc, InvalidHandshake):
        return f"that address did not answer as a Callbox server ({exc})"
    if isinstance(exc, ConnectionClosed):
        return "the connection was lost"
    if isinstance(exc, OSError):
        folded = _folded(exc)
        return exc.strerror or (os.strerror(folded[0]) if folded else str(exc))
    return str(exc) or type(exc).__name__


def _folded(exc: BaseException) -> list[int]:
    """The errno of each address tried, when asyncio tried several (localhost: ::1 and 127.0.0.1) and folded their
    errors into one OSError with no errno of its own: "Multiple exceptions: [Errno 111] Connect call failed ..."."""
    if not isinstance(exc, OSError) or exc.errno is not None:
        return []
    return [int(code) for code in re.findall(r"\[Errno (\d+)\]", str(exc))]


class SignalingClient:
    """Keeps one session with a Callbox server alive. Every message sent goes through the outbox, in order.

    Given several addresses (nodes of one cluster, where a session resumes on any node), it stays on the one that
    works; a failed attempt or a lost connection sends the next attempt to the next address, wrapping around, on
    the usual backoff. The resume token goes to whichever node it reaches."""

    def __init__(
        self,
        url: str | Iterable[str],
        user_id: str,
        display_name: str,
        *,
        token: str | None = None,
        on_message: Callable[[p.Message], None] = lambda m: None,
        on_state: Callable[[ConnState, str], None] = lambda s, why: None,
        active_calls: Callable[[], list[p.ActiveCall]] = list,
        outbox_limit: int = 500,
        first_retry: float = 0.5,
        max_retry: float = 5.0,
        ping_interval: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        identity=None,
    ):
        self.urls = addresses(url)  # in the order they are tried
        if not self.urls:
            raise ValueError("no server address was given")
        self._at = 0  # the index of the one in use
        self.identity = identity  # client.core.identity.Identity: proves the user id in hello
        self.user_id = user_id
        self.display_name = display_name
        self.token = token
        self.on_message = on_message
        self.on_state = on_state
        self.active_calls = active_calls
        self.outbox_limit = outbox_limit
        self.first_retry, self.max_retry = first_retry, max_retry
        self.ping_interval = ping_interval
        self.ssl_context = ssl_context
        self.state = ConnState.OFFLINE
        self.reason = ""
        self.resume_token: str | None = None
        self.users: dict[str, p.UserInfo] = {}
        self.channels: set[str] = set()
        self.server_info: p.ServerInfo | None = None
        self._outbox: deque[str] = deque()
        # Sent in this session, kept until a resume tells how many the server got: (number, frame).
        self._sent = 0
        self._unconfirmed: deque[tuple[int, str]] = deque(maxlen=outbox_limit)
        self._received = 0  # messages from the server in this session, presence and the welcome aside
        self._acked = 0  # ... of which the server was last told by an ack (docs/protocol.md §2.3)
        self._acks = True  # False once this server said it does not know ack
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.connects = 0  # sessions established, fresh or resumed; tests and reports read it

    # ------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """The address in use: connected to, or tried next."""
        return self.urls[self._at]

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"signaling-{self.user_id}")

    async def stop(self, *, bye: bool = True) -> None:
        """Leave for good: send what is queued, say bye (so the server skips the resume grace) and close."""
        self._stopping = True
        ws = self._ws
        if ws is not None and bye and self.state is ConnState.ONLINE:
            # The writer sends what was queued before stop() first; a bye ahead of it would have the server drop it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    while self._outbox and self._ws is ws:
                        await asyncio.sleep(0.01)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.send(p.Bye().encode()), 1)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        self._set_state(ConnState.OFFLINE, "stopped")

    def retarget(self, url: str, why: str = "moving to another server") -> bool:
        """Use the server at `url` from now on. A connection or attempt in progress is dropped (no bye: the old
        server keeps the session in its grace, so a call is not ended there) and a fresh session starts at once
        on the new server, with the calls in progress in its hello (hello.calls) so that it restores them.
        Returns False, and does nothing, when it is online at that address already."""
        if url == self.url and self.state is ConnState.ONLINE:
            return False  # already there (a server that took over the address of the one lost)
        self.urls, self._at, self.resume_token = [url], 0, None
        log.info("%s: moving to %s", self.user_id, url)
        if self._task is None or self._stopping:
            return True
        old = self._task
        old.cancel()
        self._set_state(ConnState.RECONNECTING, why)
        self._task = asyncio.get_running_loop().create_task(self._run(after=old), name=f"signaling-{self.user_id}")
        return True

    def send(self, msg: p.Message) -> None:
        """Queue a message; it goes out now if online, or in order after the next (re)connect."""
        if len(self._outbox) >= self.outbox_limit:
            raise OutboxFull(f"{len(self._outbox)} messages are waiting for the connection; the limit is "
                             f"{self.outbox_limit}")
        self._outbox.append(msg.encode())
        self._wake.set()

    def join(self, channel: str) -> None:
        self.channels.add(channel)
        self.send(p.Join(channel=channel))

    def leave(self, channel: str) -> None:
        self.channels.discard(channel)
        self.send(p.Leave(channel=channel))

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def drop_connection(self) -> None:
        """Cut the TCP connection with no close frame (tests and fault injection)."""
        if self._ws is not None:
            self._ws.transport.abort()

    # ------------------------------------------------------------ loop

    def _set_state(self, state: ConnState, reason: str = "") -> None:
        if state is not self.state or reason != self.reason:
            self.state, self.reason = state, reason
            log.info("%s: %s%s", self.user_id, state.value, f" ({reason})" if reason else "")
            try:
                self.on_state(state, reason)
            except Exception:  # a bug in the app's handler must not stop the connection loop
                log.exception("%s: state handler failed on %s", self.user_id, state.value)

    async def _run(self, after: asyncio.Task | None = None) -> None:
        if after is not None:
            await asyncio.wait([after])  # the old connection closes first
        try:
            for url in self.urls:
                parse_uri(url)  # a mistyped address among several is named now, not when its turn comes
        except InvalidURI as exc:
            self._set_state(ConnState.OFFLINE, explain(exc, exc.uri))
            return
        attempt = 0
        while not self._stopping:
            self._set_state(ConnState.CONNECTING if self.connects == 0 and attempt == 0
                            else ConnState.RECONNECTING, self.reason)
            try:
                ws = await open_connection(self.url, ssl=self.ssl_context, close_timeout=1,
                                           ping_interval=self.ping_interval, ping_timeout=self.ping_interval,
                                           max_size=4 * p.MAX_MESSAGE_BYTES)
                async with ws:
                    self._ws = ws
                    if not await self._login(ws):
                        return
                    attempt = 0
                    await self._session(ws)
                why = "the server closed the connection"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed, Refused,
                    p.ProtocolError) as exc:
                why = explain(exc, self.url)
                if isinstance(exc, InvalidURI):
                    self._set_state(ConnState.OFFLINE, why)
                    return
            finally:
                self._ws = None
            if self._stopping:
                return
            self._at = (self._at + 1) % len(self.urls)  # failed or lost here: the next attempt goes to the next
            delay = backoff(attempt, first=self.first_retry, cap=self.max_retry)
            attempt += 1
            self._set_state(ConnState.RECONNECTING, why)
            log.info("%s: retry %d in %.2f s at %s", self.user_id, attempt, delay, self.url)
            await asyncio.sleep(delay)

    async def _login(self, ws: ClientConnection) -> bool:
        nonce = ws.response.headers.get(p.NONCE_HEADER) if ws.response is not None else None
        hello = p.Hello(protocol=p.PROTOCOL_VERSION, user_id=self.user_id, display_name=self.display_name,
                        token=self.token, resume_token=self.resume_token, calls=tuple(self.active_calls()),
                        received=self._received if self.resume_token else None,
                        key=self.identity.key if self.identity else None, presence_batch=True,
                        proof=self.identity.prove(nonce, self.user_id) if self.identity and nonce else None)
        await ws.send(hello.encode())
        reply = p.decode(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(reply, p.Error) and reply.code == p.PROOF_REQUIRED and self.identity and reply.ref:
            # The handshake's nonce did not reach us (a proxy dropped the header): sign the one in the error.
            hello = dataclasses.replace(hello, proof=self.identity.prove(reply.ref, self.user_id))
            await ws.send(hello.encode())
            reply = p.decode(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(reply, p.Error):
            if reply.code in FATAL:
                self._set_state(ConnState.OFFLINE, reply.message)
                await ws.close()
                return False
            raise Refused(reply.message)
        if not isinstance(reply, p.ConnectionEstablished):
            raise InvalidHandshake(f"expected connection_established, got {reply.type}")
        self.resume_token = reply.resume_token
        self.server_info = reply.server
        users = list(reply.users)
        for _ in range(reply.users_follow or 0):  # the list in frames of its own, read before we say we are online
            listed = p.decode(await asyncio.wait_for(ws.recv(), 10))
            if not isinstance(listed, p.PresenceBatch):
                raise InvalidHandshake(f"expected the user list in presence_batch, got {listed.type}")
            users += [u for u in listed.users if u.user_id != self.user_id]
        self.users = {u.user_id: dataclasses.replace(u, display_name=display_name(u.display_name, u.user_id))
                      for u in users}
        self.connects += 1
        if reply.resumed:
            # Frames the socket took but the server never got (they were on the wire when it broke) go again,
            # ahead of anything queued since, so each arrives exactly once and in order.
            lost = [text for seq, text in self._unconfirmed if seq > reply.received]
            kept_from = self._unconfirmed[0][0] if self._unconfirmed else self._sent + 1
            if kept_from > reply.received + 1:
                log.warning("%s: %d sent message(s) were lost with the connection and are no longer kept",
                            self.user_id, kept_from - reply.received - 1)
            self._outbox.extendleft(reversed(lost))
            if lost:
                log.info("%s: resending %d message(s) lost with the connection", self.user_id, len(lost))
            self._sent = reply.received  # the server replays what we missed after our `received`
        else:
            # A fresh session: the server forgot our channels. Rejoin them ahead of anything queued.
            self._outbox.extendleft(reversed([p.Join(channel=c).encode() for c in sorted(self.channels)]))
            self._sent = self._received = 0
        self._unconfirmed.clear()
        self._acked, self._acks = 0, True  # each connection acks afresh: it may be to another server
        self._set_state(ConnState.ONLINE, "resumed" if reply.resumed else "")
        self._deliver(reply)
        return True

    async def _session(self, ws: ClientConnection) -> None:
        writer = asyncio.create_task(self._write(ws))
        try:
            async for raw in ws:
                try:
                    msg = p.decode(raw)
                except p.ProtocolError as exc:
                    self._received += 1  # the server numbered it like any other
                    log.warning("%s: ignored a bad message from the server: %s", self.user_id, exc)
                    continue
                if isinstance(msg, p.Presence):
                    self._presence(msg)
                elif isinstance(msg, p.PresenceBatch):
                    for info in msg.users:
                        if info.user_id != self.user_id:  # a batch may carry our own change too
                            self._presence(info)
                elif isinstance(msg, p.Ack):
                    self._confirmed(msg.received)
                    continue
                else:
                    self._received += 1
                    self._ack_soon()
                    if isinstance(msg, p.Error) and msg.code == p.UNKNOWN_TYPE and msg.ref == p.Ack.type:
                        self._acks = False  # an older server: it keeps everything, as it always did
                        continue
                self._deliver(msg)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _ack_soon(self) -> None:
        """Tell the server what we have (an ack) ACK_EVERY messages after the last ack, or ACK_AFTER seconds
        after a message when fewer came: so it can drop them from its replay log, and an idle user costs it
        almost nothing."""
        if not self._acks:
            return
        if self._received - self._acked >= ACK_EVERY:
            self._wake.set()  # the writer sends it
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_AFTER, self._ack_due)

    def _ack_due(self) -> None:
        self._ack_timer = None
        self._wake.set()

    def _confirmed(self, got: int) -> None:
        """The server has our first `got` frames of this session: they need not be kept for a resume."""
        while self._unconfirmed and self._unconfirmed[0][0] <= got:
            self._unconfirmed.popleft()

    async def _write(self, ws: ClientConnection) -> None:
        """Drain the outbox in order. A message leaves the outbox only once the socket took it. An ack, when one
        is due, goes first; it is neither numbered nor kept."""
        while True:
            unacked = self._received - self._acked
            if self._acks and (unacked >= ACK_EVERY or (unacked > 0 and self._ack_timer is None)):
                got = self._received
                await ws.send(p.Ack(received=got).encode())
                self._acked = got
            while self._outbox:
                await ws.send(self._outbox[0])
                self._sent += 1
                self._unconfirmed.append((self._sent, self._outbox.popleft()))
            self._wake.clear()
            await self._wake.wait()

    def _deliver(self, msg: p.Message) -> None:
        try:
            self.on_message(msg)
        except Exception:  # a bug in the app's handler must not take the session down
            log.exception("%s: handler failed on %s", self.user_id, msg.type)

    def _presence(self, msg: p.Presence | p.UserInfo) -> None:
        if msg.status == "offline":
            self.users.pop(msg.user_id, None)
        else:
            self.users[msg.user_id] = p.UserInfo(user_id=msg.user_id, status=msg.status, key=msg.key,
                                                 display_name=display_name(msg.display_name, msg.user_id))
