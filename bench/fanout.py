"""Presence fan-out to 1,000 clients: time from a triggering send (hello, call_accepted) to each client's receipt.

Listeners run in worker processes and note arrivals on CLOCK_MONOTONIC, which every process on the machine shares.
Each also holds a connection to a bare websockets broadcaster (written below), triggered in the same rounds: its
figures are the floor that this machine, this library and these listeners allow right now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
from collections import defaultdict

from _common import (
    HOST,
    Listener,
    ServerProcess,
    clock,
    gather_limited,
    join,
    ms,
    pct,
    raise_fd_limit,
    recv_type,
    start_callbox,
    verdict,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

TARGET = 0.100  # p95, seconds
GAP = 0.5  # seconds between triggers, so that one fan-out is over before the next starts
SETUP_TIMEOUT = 180


async def start_bare_broadcast() -> tuple[int, object]:
    """Every message a client sends goes, unchanged, to every other client."""
    clients = set()

    async def handler(ws) -> None:
        clients.add(ws)
        await ws.send("ready")  # the client waits for this, so it is registered before anyone triggers
        try:
            async for msg in ws:
                broadcast([c for c in clients if c is not ws], msg)
        finally:
            clients.discard(ws)

    server = await serve(handler, HOST, 0, compression=None)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], stop


async def join_bare(url: str, **kw):
    ws = await connect(url, compression=None, ping_interval=None, **kw)
    assert await ws.recv() == "ready"
    return ws


# ---------------------------------------------------------------- listeners, in worker processes


class Stamped(Listener):
    """Notes when a trigger's presence arrives, as its frame is parsed: 500 clients share a process here, and
    the time a real client, alone on its machine, would then spend handing the message on is not the server's."""

    arrivals: dict[str, list[float]] = defaultdict(list)  # "user:status" -> when each connection got it
    seen: set[str] | None = None  # per connection: only the first (trigB is online again when trigA leaves)

    def on_frame(self, data: bytes) -> None:
        t = clock()
        if b'"trig' in data:
            msg = json.loads(data)
            key = f"{msg['user_id']}:{msg['status']}"
            self.seen = self.seen or set()
            if key not in self.seen:
                self.seen.add(key)
                Stamped.arrivals[key].append(t)


def listener(urls: tuple[str, str], name: str, n: int, pipe) -> None:
    """A worker process: n Callbox users and n bare clients that note when each trigger's presence arrives."""
    raise_fd_limit()
    asyncio.run(_listen(urls, name, n, pipe))


async def _listen(urls: tuple[str, str], name: str, n: int, pipe) -> None:
    callbox, bare = urls
    conns = await gather_limited((join(callbox, f"{name}u{i}", create_connection=Stamped) for i in range(n)), 20)
    conns += await gather_limited((join_bare(bare, create_connection=Stamped) for _ in range(n)), 20)
    pipe.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "report"
    pipe.send(dict(Stamped.arrivals))
    pipe.recv()  # "exit", once the servers are gone: leaving first would announce 1,000 departures
    for ws in conns:
        ws.transport.abort()


# ---------------------------------------------------------------- triggers, in this process


async def trigger_round(url: str, bare, r: int, sent: dict[str, float]) -> None:
    """Callbox: two new users connect, one calls the other and it is accepted, then both leave.
    Bare: two presence-like messages go out through the broadcaster.

    `sent` gets, for each presence the listeners should see, the time of the send that caused it."""
    users = []
    for who in (f"trigA{r}", f"trigB{r}"):
        ws = await join(url, who, before_hello=lambda who=who: sent.__setitem__(f"{who}:online", clock()))
        users.append(ws)
        await asyncio.sleep(GAP)
    a, b = users
    await a.send(json.dumps({"type": "call_incoming", "to": f"trigB{r}", "call_id": f"c{r}", "media": ["audio"]}))
    await recv_type(b, "call_incoming")
    sent[f"trigA{r}:in_call"] = sent[f"trigB{r}:in_call"] = clock()
    await b.send(json.dumps({"type": "call_accepted", "to": f"trigA{r}", "call_id": f"c{r}"}))
    await recv_type(a, "call_accepted")
    await asyncio.sleep(GAP)
    for ws in users:
        await ws.send('{"type":"bye"}')
        await ws.wait_closed()
    await asyncio.sleep(GAP)
    for who in (f"trigX{r}", f"trigY{r}"):
        sent[f"{who}:bare"] = clock()
        await bare.send(json.dumps({"type": "presence", "user_id": who, "display_name": who, "status": "bare"}))
        await asyncio.sleep(GAP)


async def main(n: int, workers: int, rounds: int) -> bool:
    ctx = multiprocessing.get_context("spawn")
    per = n // workers
    with ServerProcess(start_callbox) as srv, ServerProcess(start_bare_broadcast) as bare_srv:
        pipes, procs = [], []
        for w in range(workers):
            mine, theirs = ctx.Pipe()
            procs.append(ctx.Process(target=listener, args=((srv.url, bare_srv.url), f"w{w}", per, theirs),
                                     daemon=True))
            procs[-1].start()
            pipes.append(mine)
        try:
            for p in pipes:
                if not p.poll(SETUP_TIMEOUT):
                    raise RuntimeError("listeners did not connect in time")
                assert p.recv() == "ready"
            await asyncio.sleep(1)
            print(f"{per * workers:,} listeners on each server, in {workers} processes; {rounds} rounds", flush=True)
            sent: dict[str, float] = {}
            bare = await join_bare(bare_srv.url)
            for r in range(rounds):
                await asyncio.wait_for(trigger_round(srv.url, bare, r, sent), 30)
            await asyncio.sleep(1)
            for p in pipes:
                p.send("report")
            arrivals: dict[str, list[float]] = defaultdict(list)
            for p in pipes:
                if not p.poll(30):
                    raise RuntimeError("a listener did not report")
                for key, times in p.recv().items():
                    arrivals[key] += times
        finally:
            srv.stop(graceful=False)
            bare_srv.stop(graceful=False)
            for p in pipes:
                with contextlib.suppress(OSError):
                    p.send("exit")
            for proc in procs:
                proc.join(5)
                proc.kill()

    ok, base = True, None
    for status, cause in (("bare", "bare websockets broadcast (baseline)"), ("online", "user connects (hello)"),
                          ("in_call", "call accepted (call_accepted)")):
        keys = [k for k in sent if k.endswith(":" + status)]
        lat = [t - sent[k] for k in keys for t in arrivals[k]]
        missing = len(keys) * per * workers - len(lat)
        last = [max(t - sent[k] for t in arrivals[k]) for k in keys if arrivals[k]]
        p95 = pct(lat, 95)
        base = base or p95
        print(f"\n{cause}: {len(keys)} triggers, {missing} receipts missing\n"
              f"  p50 {ms(pct(lat, 50))}  p95 {ms(p95)} ({p95 / base:.1f}x the baseline's)  max {ms(max(lat))};  "
              f"last receipt per trigger: best {ms(min(last))}, median {ms(pct(last, 50))}")
        if status != "bare":
            ok &= verdict(f"p95, {cause}", ms(p95), "<= 100 ms", p95 <= TARGET and not missing)
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="listening clients (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="processes the listeners are spread over (default 2)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of triggers (default 10)")
    args = ap.parse_args()
    raise_fd_limit()
    raise SystemExit(0 if asyncio.run(main(args.n, args.workers, args.rounds)) else 1)
