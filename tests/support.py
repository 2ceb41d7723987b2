"""Test helpers: a real websockets client speaking the Callbox protocol, and a server started on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from server import HubConfig, SignalingServer

MS = 0.001  # test time is written in this one unit

FAST = dict(ping_interval=100 * MS, resume_grace=500 * MS, ring_timeout=1000 * MS)
# Keepalive and grace as an installed server has them, for scenarios whose clients keep their loop busy (video to
# several, a screen share) on a loaded machine: the tests' 100 ms would cut them off.
BUSY = dict(ping_timeout=2.0, ping_interval=1.0, resume_grace=5.0)


def new_server(port: int = 0, *, ping_timeout: float = 100 * MS, bindings=None, **config: Any) -> SignalingServer:
    """A server on loopback (not started yet) with the tests' keepalive and grace (FAST), unless `config` says."""
    return SignalingServer("127.0.0.1", port, config=HubConfig(**{**FAST, **config}), ping_timeout=ping_timeout,
                           bindings=bindings)


@contextlib.asynccontextmanager
async def running_server(ping_timeout: float = 100 * MS, bindings=None, **config: Any):
    server = new_server(ping_timeout=ping_timeout, bindings=bindings, **config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Peer:
    """One raw protocol client. `expect` reads until a message of the given type, keeping the rest in order."""

    def __init__(self, ws: ClientConnection, user_id: str):
        self.ws = ws
        self.user_id = user_id
        self.backlog: list[dict] = []
        self.welcome: dict | None = None
        self.got = 0  # messages of the session read so far (not the welcome, nor presence): hello's `received`

    @classmethod
    async def connect(cls, url: str, user_id: str, *, hello: bool = True, **fields: Any) -> Peer:
        ws = await connect(url, ping_interval=None, max_size=None)
        peer = cls(ws, user_id)
        if hello:
            await peer.hello(**fields)
        return peer

    async def hello(self, **fields: Any) -> dict:
        msg = {"type": "hello", "protocol": 1, "user_id": self.user_id, "display_name": self.user_id.title(), **fields}
        await self.send(msg)
        self.welcome = await self.expect("connection_established", "error")
        return self.welcome

    async def send(self, msg: dict | str | bytes) -> None:
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def recv(self, timeout: float = 2.0) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        return self._count(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    def _count(self, msg: dict) -> dict:
        if msg["type"] not in ("connection_established", "presence", "presence_batch"):
            self.got += 1
        return msg

    async def expect(self, *types: str, timeout: float = 2.0, **match: Any) -> dict:
        """The first message of one of `types` (and whose fields equal `match`); others stay in the backlog."""
        for i, msg in enumerate(self.backlog):
            if msg["type"] in types and all(msg.get(k) == v for k, v in match.items()):
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                msg = self._count(json.loads(await self.ws.recv()))
                if msg["type"] in types and all(msg.get(k) == v for k, v in match.items()):
                    return msg
                self.backlog.append(msg)

    async def silent(self, type_: str, wait: float = 200 * MS) -> bool:
        """True if no message of this type arrives within `wait`."""
        try:
            await self.expect(type_, timeout=wait)
        except TimeoutError:
            return True
        return False

    async def closed(self, timeout: float = 2.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; return its close code and reason."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                async for raw in self.ws:
                    self.backlog.append(self._count(json.loads(raw)) if isinstance(raw, str) else {"type": "<binary>"})
        await self.ws.wait_closed()
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, None)

    async def drain(self) -> None:
        """Read and drop everything until the connection closes: a client that stops reading is cut off."""
        with contextlib.suppress(Exception):
            async for _ in self.ws:
                pass

    def cut(self) -> None:
        """Drop the TCP connection with no close frame, as a vanished laptop would."""
        self.ws.transport.abort()

    def freeze(self) -> None:
        """Stay connected but stop reading, so pings go unanswered (a half-open connection)."""
        self.ws.transport.pause_reading()

    async def close(self) -> None:
        await self.ws.close()

    async def call(self, other: Peer, call_id: str = "c1", media: tuple = ("audio",)) -> None:
        """Ring `other` and have it accept; both sides see the call established."""
        await self.send({"type": "call_incoming", "to": other.user_id, "call_id": call_id, "media": list(media)})
        await other.expect("call_incoming", call_id=call_id)
        await other.send({"type": "call_accepted", "to": self.user_id, "call_id": call_id})
        await self.expect("call_accepted", call_id=call_id)


async def eventually(check, timeout: float = 2.0) -> None:
    """Wait until `check()` is true, for state the server updates after the client already saw the effect."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(10 * MS)
