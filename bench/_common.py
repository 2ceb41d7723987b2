"""Helpers shared by the benchmarks: a server in its own process, Callbox clients, in-process call engines and
bare aiortc peers, percentiles and verdict lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import resource
import time

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Opcode

HOST = "127.0.0.1"  # the benchmarks never leave loopback
MANY = 10**9  # a rate limit (messages/s and burst) that a benchmark never reaches


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to the hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------- a server in its own process


async def start_callbox(compression: bool = False) -> tuple[int, object]:
    """Start the Callbox server as an embedder would, rate limit and login caps out of the way; return (port, stop)."""
    from server import HubConfig, SignalingServer

    srv = SignalingServer(HOST, 0, config=HubConfig(rate=MANY, burst=MANY, max_unauthenticated=0,
                                                  max_unauthenticated_per_ip=0), compression=compression)
    await srv.start()
    return srv.port, srv.stop


def _serve(pipe, start, args) -> None:
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        port, stop = await start(*args)
        pipe.send(port)
        try:
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop", or EOF if the parent died
        except EOFError:
            pass
        await stop()

    asyncio.run(main())


class ServerProcess:
    """`with ServerProcess(start_callbox, True) as srv:` runs `await start(*args)` in a child process.

    `start` must be a module-level coroutine function returning (port, stop). `srv.url`, `srv.ps` (psutil)."""

    def __init__(self, start, *args):
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, start, args), daemon=True)

    def __enter__(self) -> ServerProcess:
        self.proc.start()
        if not self._pipe.poll(30):
            self.proc.kill()
            raise RuntimeError("the server process did not start within 30 s")
        self.url = f"ws://{HOST}:{self._pipe.recv()}"
        self.ps = psutil.Process(self.proc.pid)
        return self

    def __exit__(self, *exc) -> None:
        self.stop(graceful=True)

    def stop(self, graceful: bool = True, timeout: float = 10) -> None:
        if self.proc.is_alive() and graceful:
            self._pipe.send("stop")
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


def own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


# ---------------------------------------------------------------- Callbox clients


def hello(user_id: str) -> str:
    return json.dumps({"type": "hello", "protocol": 1, "user_id": user_id, "display_name": user_id})


async def join(url: str, user_id: str, *, deflate: bool = False, before_hello=None, **kw) -> ClientConnection:
    """Connect, say hello and return once connection_established has arrived. `kw` goes to connect()."""
    ws = await connect(url, compression="deflate" if deflate else None, ping_interval=None, max_size=None,
                       open_timeout=60, **kw)
    if before_hello is not None:
        before_hello()  # e.g. note the time: a hello is what announces a user to everyone
    await ws.send(hello(user_id))
    first = await ws.recv()
    if not first.startswith('{"type":"connection_established"'):  # cheaper than parsing 5,000 users
        raise RuntimeError(f"{user_id} got {first[:200]}")
    return ws


class Listener(ClientConnection):
    """A client connection that, after its first text frame (the welcome, left for recv()), hands every text frame
    to on_frame() as soon as it is parsed instead of queueing it: no reader task, no recv() per message. Use with
    join(..., create_connection=Subclass). websockets still parses (and inflates) each frame and answers pings."""

    welcomed = False

    def on_frame(self, data: bytes) -> None:
        pass

    def process_event(self, event) -> None:
        text = getattr(event, "opcode", None) is Opcode.TEXT  # events: the handshake response, then frames
        if text and self.welcomed:
            self.on_frame(bytes(event.data))
            return
        self.welcomed |= text
        super().process_event(event)


async def recv_type(ws: ClientConnection, kind: str) -> dict:
    """Read until a message of this type arrives, skipping others (presence, mostly)."""
    while True:
        msg = json.loads(await ws.recv())
        if msg["type"] == kind:
            return msg
        if msg["type"] == "error":
            raise RuntimeError(msg)


async def start_call(caller: ClientConnection, a: str, callee: ClientConnection, b: str, call_id: str) -> None:
    """a calls b and b accepts; returns once a has seen the acceptance, so the call is established."""
    await caller.send(json.dumps({"type": "call_incoming", "to": b, "call_id": call_id, "media": ["audio"]}))
    await recv_type(callee, "call_incoming")
    await callee.send(json.dumps({"type": "call_accepted", "to": a, "call_id": call_id}))
    await recv_type(caller, "call_accepted")


async def gather_limited(coros, limit: int) -> list:
    """asyncio.gather, at most `limit` at a time."""
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# ---------------------------------------------------------------- figures


def pct(values, q: float) -> float:
    """The q-th percentile by nearest rank."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def verdict(label: str, value: str, target: str, ok: bool) -> bool:
    print(f"  {label:<44} {value:>14}   target {target:<14} {'PASS' if ok else 'FAIL'}")
    return ok


def clock() -> float:
    """CLOCK_MONOTONIC: one clock for every process on this machine, so timestamps compare across them."""
    return time.monotonic()


# ---------------------------------------------------------------- calls: in-process engines and bare aiortc peers


async def until(check, timeout: float, what: str):
    """Poll `check()` every 5 ms until it returns something true, and return that; TimeoutError names `what`."""
    try:
        async with asyncio.timeout(timeout):
            while not (result := check()):
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"no {what} within {timeout:g} s") from None
    return result


async def start_engines(url: str, *users: tuple[str, float]) -> list:
    """One Engine per (user, tone Hz) with synthetic media and no playback, online and seeing each other."""
    from client.core.engine import Engine, EngineConfig
    from client.core.media import LocalMedia

    engines = [Engine(EngineConfig(server=url, user_id=user, display_name=user), LocalMedia(tone_hz=hz, playback=False))
               for user, hz in users]
    for e in engines:
        await e.start()
    names = {user for user, _ in users}
    for e in engines:
        await until(lambda e=e: e.connection.value == "online" and names - {e.config.user_id} <= set(e.signaling.users),
                    10, f"{e.config.user_id} online")
    return engines


async def ring(caller, callee) -> tuple[str, object, object]:
    """`caller` calls `callee`; returns (call_id, caller's CallSession, callee's) once it rings at the callee."""
    call_id = caller.call(callee.config.user_id)
    incoming = await until(lambda: callee.sessions.get(call_id), 10, "incoming call")
    return call_id, caller.sessions[call_id], incoming


async def hang_up(caller, callee, call_id: str) -> None:
    """Hang up and wait until both engines have closed the call's peer connection."""
    caller.hangup(call_id)
    await until(lambda: call_id not in caller.sessions and call_id not in callee.sessions, 10, "teardown")


class DirectCall:
    """Two RTCPeerConnections in this process, no server and no STUN, one audio track each way: aiortc's floor.

    `hear[i](samples, arrived)` gets every decoded block side i receives (first channel, int16) and its monotonic
    arrival time; `first[i]` is when side i decoded its first remote audio frame. Side 0 offers."""

    def __init__(self, tracks: tuple, hear: tuple = (None, None)):
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.tracks, self.hear = tracks, hear
        self.pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
        self.first: list[float | None] = [None, None]
        self.tasks: list[asyncio.Task] = []
        for i, pc in enumerate(self.pcs):
            pc.on("track", lambda track, i=i: self.tasks.append(asyncio.create_task(self._consume(i, track))))

    async def _consume(self, i: int, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if self.first[i] is None:
                    self.first[i] = now
                if self.hear[i] is not None:
                    self.hear[i](frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0], now)

    async def connect(self) -> None:
        """Offer, answer and apply both, as the engine's signaling would, minus the server."""
        a, b = self.pcs
        a.addTrack(self.tracks[0])
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        b.addTrack(self.tracks[1])
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        await asyncio.gather(*(pc.close() for pc in self.pcs))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
