"""Helpers shared by the benchmarks: a server in its own process, Callbox clients, percentiles and verdict lines."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing
import resource
import time

import psutil
from websockets.asyncio.client import ClientConnection, connect

HOST = "127.0.0.1"  # the benchmarks never leave loopback
MANY = 10**9  # a rate limit (messages/s and burst) that a benchmark never reaches


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to the hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------- a server in its own process


async def start_callbox(compression: bool = False) -> tuple[int, object]:
    """Start the Callbox server as an embedder would, rate limit out of the way; return (port, stop)."""
    from server import HubConfig, SignalingServer

    srv = SignalingServer(HOST, 0, config=HubConfig(rate=MANY, burst=MANY), compression=compression)
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


async def join(url: str, user_id: str, *, deflate: bool = False) -> ClientConnection:
    """Connect, say hello and return once connection_established has arrived."""
    ws = await connect(url, compression="deflate" if deflate else None, ping_interval=None, max_size=None,
                       open_timeout=60)
    await ws.send(hello(user_id))
    first = await ws.recv()
    if not first.startswith('{"type":"connection_established"'):  # cheaper than parsing 5,000 users
        raise RuntimeError(f"{user_id} got {first[:200]}")
    return ws


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
