"""A loopback TCP proxy for tests that, on command, delays, stalls or cuts the bytes between a client and a server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

LOOPBACK = "127.0.0.1"


class FaultProxy:
    """Listens on 127.0.0.1 (port 0) and forwards every connection to `target_port` on 127.0.0.1.

    Faults, all controllable while connections are open:

    * `delay`: seconds of one-way latency added to every chunk, in both directions (order is kept).
    * `stall()` / `unstall()`: stop forwarding in both directions, new connections included, with every socket
      left open (a black-holed path); what arrives meanwhile is held, and sent on at `unstall()`.
    * `cut()`: abort every open connection on both sides with a TCP reset: no close frame, and whatever the
      proxy still holds is lost, as with a vanished network.
    * `refusing`: while true, a new connection is reset as soon as it is accepted (the path is down).

    `accepted` counts connection attempts and `accept_times` records when each came (loop time).
    """

    def __init__(self, target_port: int, *, delay: float = 0.0):
        self.target_port = target_port
        self.delay = delay
        self.refusing = False
        self.accepted = 0
        self.accept_times: list[float] = []
        self.cuts = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.done() for link in links), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not running"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def open_links(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------ faults

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def stall(self) -> None:
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    def cut(self) -> int:
        """Reset every open connection at both ends; return how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.cuts += 1
        return len(links)

    # ------------------------------------------------------------ forwarding

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.accepted += 1
        self.accept_times.append(loop.time())
        if self.refusing:
            _reset(c_writer)
            return
        try:
            s_reader, s_writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, self.target_port), 2)
        except (OSError, TimeoutError):
            _reset(c_writer)  # the server is down: the client sees its connection reset
            return
        link = _Link(self, (c_reader, c_writer), (s_reader, s_writer))
        self._links.add(link)
        try:
            await link.done()
        finally:
            self._links.discard(link)


class _Link:
    """One proxied connection: two one-way pumps, each a reader feeding a delayed, stallable writer."""

    def __init__(self, proxy: FaultProxy, client: tuple, server: tuple):
        self.proxy = proxy
        self.writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter] = (client[1], server[1])
        self.tasks = [
            asyncio.create_task(self._pump(client[0], server[1])),
            asyncio.create_task(self._pump(server[0], client[1])),
        ]
        self.aborted = False

    async def done(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.aborted:
            for w in self.writers:
                w.close()

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        for w in self.writers:
            _reset(w)
        for t in self.tasks:
            t.cancel()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:  # ends at EOF (an empty chunk), a socket error, or cancellation
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = None  # reset by the peer: pass the reset on
                held.put_nowait((loop.time() + self.proxy.delay, data))
                if not data:
                    return

        feeder = asyncio.create_task(read())
        try:
            while True:
                at, data = await held.get()
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
                await self.proxy._flowing.wait()
                if data is None:
                    self.abort()
                    return
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            self.abort()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: SO_LINGER with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
