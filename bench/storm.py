"""Reconnect storm: seconds from a server restart until all n clients are online again with complete user lists.

n clients, split over several client processes, log in to a server on a fixed port and wait until each knows the
n-1 others as online. Then the server is killed (SIGKILL) and a new one started on the same port: every client
notices the drop, retries as the real client does (backoff from 0.5 s, doubling with jitter up to 5 s, 5 s to open)
and says a fresh hello. The run measures, from the restart (the kill) on, when each client's view is complete again,
how many logins failed or timed out on the way, and the new server process's CPU seconds until the last is done.
With --old-clients the clients do not ask for presence_batch: the welcome lists every user and each change comes
in a presence frame of its own, as before presence ticks. Run from the repository root:
.venv/bin/python bench/storm.py [-n 2000] [--old-clients]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
from collections import Counter
from multiprocessing.connection import wait

from _common import (
    HOST,
    MANY,
    Listener,
    ServerProcess,
    clock,
    gather_limited,
    own_cpu,
    pct,
    raise_fd_limit,
    until,
    verdict,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from client.core.signaling import backoff

CONCURRENCY = 20  # logins at once per client process before the storm (the storm itself has no limit)
OPEN_TIMEOUT = 5.0  # seconds for the opening handshake, as the real client
WELCOME_TIMEOUT = 10.0  # seconds from the handshake to connection_established (the server's hello timeout)
SETUP_TIMEOUT = 900  # seconds for the first logins: old clients at 2,000 cost the server ~2 million presence frames
TARGETS = {2000: 10.0, 5000: 30.0}  # n: seconds from the restart until every client is complete
USER_ID = re.compile(rb'"user_id":"([^"]+)"')


async def start_on(port: int) -> tuple[int, object]:
    """start_callbox's server (rate limit and login caps out of the way) on a given port: the same URL again."""
    from server import HubConfig, SignalingServer

    srv = SignalingServer(HOST, port, config=HubConfig(rate=MANY, burst=MANY, max_unauthenticated=0,
                                                     max_unauthenticated_per_ip=0))
    await srv.start()
    return srv.port, srv.stop


class Peer(Listener):
    """One session of a client: the others it knows as not offline, from the welcome and presence(_batch) frames.

    Frames are not parsed as JSON unless they say "offline": at 5,000 users the clients read 50 million user
    entries in a storm, and parsing them would take the cores the server needs."""

    n = 0  # users in all
    done: dict[bytes, float] = {}  # user -> when its current session's view became complete (this process)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.me, self.view, self.early, self.complete = b"", set(), [], False

    def on_frame(self, data: bytes) -> None:
        if self.early is not None:  # before the welcome is read: keep the order
            self.early.append(data)
        else:
            self.take(data)

    def take(self, data: bytes) -> None:
        if b'"offline"' in data:
            msg = json.loads(data)
            for u in msg.get("users", [msg]):
                (self.view.discard if u["status"] == "offline" else self.view.add)(u["user_id"].encode())
        else:
            self.view.update(USER_ID.findall(data))
        self.view.discard(self.me)
        if not self.complete and len(self.view) == Peer.n - 1:
            self.complete = True
            Peer.done.setdefault(self.me, clock())

    def welcome(self, text: str) -> None:
        if not text.startswith('{"type":"connection_established"'):
            raise RuntimeError(f"{self.me.decode()} got {text[:200]}")
        early, self.early = self.early, None
        for data in [text.encode(), *early]:  # the old welcome lists every user; the new one has users_follow
            self.take(data)


async def login(url: str, user: str, batch: bool) -> Peer:
    ws = await connect(url, ping_interval=None, max_size=None, open_timeout=OPEN_TIMEOUT, create_connection=Peer)
    try:
        ws.me = user.encode()
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "user_id": user, "display_name": user,
                                  **({"presence_batch": True} if batch else {})}))
        async with asyncio.timeout(WELCOME_TIMEOUT):
            ws.welcome(await ws.recv())
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def live(url: str, user: str, ws: Peer, batch: bool, stats: Counter, conns: dict) -> None:
    """The real client's loop: after a drop wait backoff(0), then retry with backoff until a login succeeds."""
    attempt = 0
    while True:
        if ws is not None:
            conns[user] = ws
            await ws.wait_closed()
            Peer.done.pop(ws.me, None)
            attempt = 0
        await asyncio.sleep(backoff(attempt))
        attempt += 1
        ws = None
        try:
            ws = await login(url, user, batch)
            stats["logins"] += 1
        except TimeoutError:
            stats["timed out"] += 1
        except ConnectionRefusedError:
            stats["refused"] += 1  # the server is down: expected, not a failure
        except (OSError, InvalidHandshake, WebSocketException, RuntimeError) as exc:
            stats["failed"] += 1
            stats.setdefault(f"first failure: {type(exc).__name__}: {exc}"[:160], 1)


async def clients(url: str, users: list[str], n: int, batch: bool, timeout: float, pipe) -> None:
    loop = asyncio.get_running_loop()
    Peer.n, stats, conns = n, Counter(), {}
    first = await gather_limited((login(url, u, batch) for u in users), CONCURRENCY)
    tasks = [asyncio.create_task(live(url, u, ws, batch, stats, conns)) for u, ws in zip(users, first, strict=True)]
    await until(lambda: len(Peer.done) == len(users), SETUP_TIMEOUT, "complete user list before the storm")
    pipe.send("ready")
    await loop.run_in_executor(None, pipe.recv)  # "storm": the server is about to be killed
    Peer.done.clear()
    stats.clear()
    cpu = own_cpu()
    pipe.send("set")
    try:
        await until(lambda: len(Peer.done) == len(users), timeout, "")
    except TimeoutError:
        pass
    pipe.send({"done": list(Peer.done.values()), "stats": dict(stats), "cpu": own_cpu() - cpu})
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    for t in tasks:
        t.cancel()
    for ws in conns.values():
        ws.transport.abort()


def client_process(url: str, users: list[str], n: int, batch: bool, timeout: float, pipe) -> None:
    raise_fd_limit()
    asyncio.run(clients(url, users, n, batch, timeout, pipe))


def main(n: int, procs: int, batch: bool, timeout: float) -> bool:
    ctx = multiprocessing.get_context("spawn")
    print(f"{n:,} {'new (presence_batch)' if batch else 'old (presence)'} clients in {procs} processes; "
          f"storm timeout {timeout:g} s")
    srv = ServerProcess(start_on, 0).__enter__()
    url, port = srv.url, int(srv.url.rsplit(":", 1)[1])
    pipes, children, new = [], [], None
    try:
        for k in range(procs):
            mine, theirs = ctx.Pipe()
            users = [f"u{i:05d}" for i in range(k, n, procs)]
            children.append(ctx.Process(target=client_process, args=(url, users, n, batch, timeout, theirs)))
            children[-1].start()
            pipes.append(mine)
        t = clock()
        for p in pipes:
            if not p.poll(SETUP_TIMEOUT + 60) or p.recv() != "ready":
                raise RuntimeError("a client process did not log its clients in")
        print(f"  all {n:,} logged in and complete after {clock() - t:.1f} s; killing the server", flush=True)
        for p in pipes:
            p.send("storm")
        for p in pipes:
            p.recv()
        t0 = clock()
        srv.stop(graceful=False)  # SIGKILL
        new = ServerProcess(start_on, port).__enter__()
        listening, cpu_listening = clock() - t0, new.cpu()
        results, left = [], list(pipes)
        while left:
            ready = wait(left, timeout + 30)
            if not ready:
                raise RuntimeError("a client process did not report")
            for p in ready:
                results.append(p.recv())
                left.remove(p)
        cpu = new.cpu()
    finally:
        for p in pipes:
            p.send("stop")
        for c in children:
            c.join(10)
            if c.is_alive():
                c.kill()
        srv.stop(graceful=False)
        if new is not None:
            new.stop(graceful=False)
    times = [d - t0 for r in results for d in r["done"]]
    stats = sum((Counter(r["stats"]) for r in results), Counter())
    last = max(times) if len(times) == n else float("inf")
    print(f"\n  {'clients complete again':<44} {len(times):>8,} / {n:,}")
    print(f"  {'new server listening after the kill':<44} {listening:>8.2f} s")
    if times:
        print(f"  {'per-client time to complete p50 / p99':<44} {pct(times, 50):>8.2f} s / {pct(times, 99):.2f} s")
    print(f"  {'logins / refused (server down) / failed':<44} {stats['logins']:>8,} / {stats['refused']:,} / "
          f"{stats['failed']:,}")
    for key in stats:
        if key.startswith("first failure"):
            print(f"    {key}")
    print(f"  {'server CPU: start-up / storm / total':<44} {cpu_listening:>8.2f} s / {cpu - cpu_listening:.2f} s / "
          f"{cpu:.2f} s")
    print(f"  {'client processes CPU during the storm':<44} {sum(r['cpu'] for r in results):>8.2f} s")
    ok = verdict("handshakes or welcomes timed out", f"{stats['timed out']:,}", "0", stats["timed out"] == 0)
    label = "restart -> last client complete"
    if n in TARGETS:
        ok &= verdict(label, f"{last:.2f} s", f"<= {TARGETS[n]:g} s", last <= TARGETS[n])
    else:
        print(f"  {label:<44} {last:>14.2f} s")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="clients (default 2000)")
    ap.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--old-clients", action="store_true",
                    help="clients that do not ask for presence_batch: one presence frame per change, as before")
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds the storm may take before giving up (default 120)")
    args = ap.parse_args()
    if raise_fd_limit() < args.n + 100:
        raise SystemExit(f"the open-file limit is too low for {args.n} connections")
    raise SystemExit(0 if main(args.n, args.procs, not args.old_clients, args.timeout) else 1)
