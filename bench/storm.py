"""Reconnect storm: seconds from a server restart until all n clients are online again with complete user lists.

n clients, split over several client processes, log in to a server on a fixed port and wait until each knows the n-1
others as online. Then the server is killed (SIGKILL) and a new one started on the same port: every client notices
the drop, retries as the real client does (backoff from 0.5 s, doubling with jitter up to 5 s; 5 s for TCP to
connect, then 10 s for the opening handshake) and says a fresh hello. The first logins, before the storm, retry the
same way. The run measures, from the restart (the kill) on, when each client's view is complete again, how many
attempts failed or timed out on the way (and why), the listen queue's overflows (TcpExtListenOverflows), and the new
server process's CPU seconds until the last is done. The server has no cap on connections waiting to log in
(--login-cap N sets one, as a server's --max-unauthenticated, 256 by default: more are refused with HTTP 503 and
retry), none per address and no rate limit: all n clients come from 127.0.0.1, which no real deployment sees.
With --old-clients the clients do not ask for presence_batch: the welcome lists every user and each change comes
in a presence frame of its own, as before presence ticks. --server-tree PATH runs the server (server/ and shared/)
of another checkout, e.g. a git worktree of an older commit, with the same clients. Run from the repository root:
.venv/bin/python bench/storm.py [-n 2000] [--old-clients] [--server-tree PATH] [--progress]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from multiprocessing.connection import wait

from _common import (
    HOST,
    MANY,
    ServerProcess,
    clock,
    own_cpu,
    pct,
    raise_fd_limit,
    until,
    verdict,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, WebSocketException

from client.core.signaling import backoff, open_connection

CONCURRENCY = 20  # first logins at once per client process before the storm (the storm itself has no limit)
WELCOME_TIMEOUT = 10.0  # seconds from the handshake to connection_established (the server's hello timeout)
TARGETS = {2000: 10.0, 5000: 30.0}  # n: seconds from the restart until every client is complete
USER_NUMBER = re.compile(rb'"user_id":"u(\d+)"')  # the bench's users are u00000, u00001, ...
PROGRESS = 5.0  # seconds between progress lines with --progress


class WelcomeTimeout(TimeoutError):
    """The handshake succeeded but connection_established did not come within WELCOME_TIMEOUT."""


def listen_overflows() -> int:
    """The kernel's TcpExtListenOverflows: connections dropped because a listen queue was full (this network
    namespace, every socket in it: other programs on the machine count too)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])


class LoopLag:
    """The longest this process's event loop was late for a 50 ms sleep since the last take()."""

    def __init__(self, watchdog: bool = False):
        self.worst, self.beat = 0.0, clock()
        self.task = asyncio.create_task(self._run())
        if watchdog:
            threading.Thread(target=self._watch, args=(threading.main_thread().ident,), daemon=True).start()

    def _watch(self, ident) -> None:
        """Diagnostics: where the loop is when it has not come round for 2 s."""
        import traceback
        seen = None
        while True:
            time.sleep(0.5)
            if clock() - self.beat > 2 and seen != self.beat:
                seen = self.beat
                print("    STALL:\n" + "".join(traceback.format_stack(sys._current_frames()[ident])[-12:]), flush=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.beat = clock()
            t = loop.time()
            await asyncio.sleep(0.05)
            self.worst = max(self.worst, loop.time() - t - 0.05)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


_server_lag: list = []  # keeps the server process's lag probe alive


async def start_on(port: int, tree: str | None, lag, cap: int) -> tuple[int, object]:
    """The server (no rate limit, no cap per address) on a given port: the same URL again. `tree`: import
    server/ and shared/ from that checkout instead. `lag` (a shared double): the event loop's worst lateness.
    `cap`: connections waiting to log in, at most (max_unauthenticated; 0: no limit)."""
    if tree:
        for name in list(sys.modules):  # this process imported shared/ already (for client.core.signaling)
            if name.split(".")[0] in ("server", "shared"):
                del sys.modules[name]
        sys.path.insert(0, tree)
    import server
    from server import HubConfig, SignalingServer

    if tree and not server.__file__.startswith(tree):
        raise RuntimeError(f"imported {server.__file__}, not the server in {tree}")
    srv = SignalingServer(HOST, port, config=HubConfig(rate=MANY, burst=MANY, max_unauthenticated=cap,
                                                     max_unauthenticated_per_ip=0))
    await srv.start()
    probe = LoopLag()

    async def publish() -> None:
        while True:
            await asyncio.sleep(0.05)
            lag.value = max(lag.value, probe.worst)

    _server_lag[:] = [probe, asyncio.create_task(publish())]
    return srv.port, srv.stop


@functools.lru_cache(maxsize=256)
def read_users(data: bytes) -> tuple[int, int]:
    """The users a frame says are online and offline, as bit masks (bit i: user u{i:05d}). Cached: the server
    sends the same bytes to every client (a tick's batch, a tick's user list), so a process reads each such frame
    once, not once per client; and a client's view is one int, not a set that 5,000 ids are added to."""
    if b'"offline"' not in data:
        return mask(USER_NUMBER.findall(data)), 0
    msg, last = json.loads(data), {}
    for u in msg.get("users", [msg]):
        last[u["user_id"][1:]] = u["status"]
    return mask(i for i, s in last.items() if s != "offline"), mask(i for i, s in last.items() if s == "offline")


def mask(numbers: Iterable[bytes | str]) -> int:
    bits = bytearray(Peer.n // 8 + 1)
    for number in numbers:
        i = int(number)
        bits[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(bits, "little")


class Peer(ClientConnection):
    """One session of a client: the others it knows as not offline, from the welcome and presence(_batch) frames.

    websockets does the opening handshake; from the hello on, this reads the server's frames itself (unmasked,
    unfragmented text, pings answered, a close frame ends the connection) and scans them without parsing JSON
    unless they say "offline". At 5,000 users the clients read 25 million user entries and tens of thousands of
    frames a second in a storm, and websockets' parser (about 20 us a frame) made the clients, on the same two
    cores, use three times the server's CPU and lag seconds behind, which timed their own handshakes out."""

    n, everyone = 0, 0  # users in all, and the view of one who knows them all (every bit set)
    done: dict[bytes, float] = {}  # user -> when its current session's view became complete (this process)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.me, self.bit, self.view, self.complete = b"", 0, 0, False  # view: a bit per user known as not offline
        self.raw: bytearray | None = None  # from the hello on: what is received and not yet read
        self.welcomed: asyncio.Future | None = None

    def read_frames(self) -> None:
        """From now on data_received reads frames here. Called once the handshake is done, before the hello:
        the server says nothing before it, so websockets holds no part of a frame."""
        if self.protocol.reader.buffer:
            raise RuntimeError("the server sent frames before the hello")
        self.raw, self.welcomed = bytearray(), self.loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.raw is None:
            super().data_received(data)
            return
        buf = self.raw
        buf += data
        i, end = 0, len(buf)
        while end - i >= 2:
            b0, size, h = buf[i], buf[i + 1] & 0x7F, 2
            if size == 126:
                if end - i < 4:
                    break
                size, h = int.from_bytes(buf[i + 2:i + 4], "big"), 4
            elif size == 127:
                if end - i < 10:
                    break
                size, h = int.from_bytes(buf[i + 2:i + 10], "big"), 10
            if end - i < h + size:
                break
            payload, op = bytes(buf[i + h:i + h + size]), b0 & 0x0F
            i += h + size
            if op == 0x1 and b0 & 0x80:
                self.frame(payload)
            elif op == 0x9:  # ping: the server's keepalive
                self.protocol.send_pong(payload)
                self.send_data()
            else:  # close, or something this reader does not expect from the server: end the session
                self.transport.abort()
                break
        del buf[:i]

    def frame(self, data: bytes) -> None:
        if not self.welcomed.done():
            if not data.startswith(b'{"type":"connection_established"'):
                self.welcomed.set_exception(RuntimeError(f"{self.me.decode()} got {data[:200].decode()}"))
                self.transport.abort()
                return
            self.welcomed.set_result(None)  # the old welcome lists every user; the new one has users_follow
        online, offline = read_users(data)
        self.view = (self.view & ~offline) | online
        if not self.complete and self.view | self.bit == Peer.everyone:
            self.complete = True
            Peer.done.setdefault(self.me, clock())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.welcomed is not None and not self.welcomed.done():
            self.welcomed.set_exception(ConnectionResetError("closed before the welcome"))
        super().connection_lost(exc)


class Run:
    """What this client process counts, per phase (the first logins, then the storm)."""

    stats: Counter = Counter()
    handshakes: list[float] = []  # seconds each successful opening handshake took
    welcomes: list[float] = []  # seconds from each hello to its connection_established
    gate: asyncio.Semaphore | None = None  # before the storm: at most CONCURRENCY logins at once


async def login(url: str, user: str, batch: bool) -> Peer:
    t = clock()
    ws = await open_connection(url, ping_interval=None, max_size=None, create_connection=Peer, proxy=None,
                               compression=None)  # no proxy lookup, no deflate offer: the server has none
    Run.handshakes.append(clock() - t)
    try:
        ws.me, ws.bit = user.encode(), 1 << int(user[1:])
        ws.read_frames()
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "user_id": user, "display_name": user,
                                  **({"presence_batch": True} if batch else {})}))
        t = clock()
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT):
                await ws.welcomed
            Run.welcomes.append(clock() - t)
        except TimeoutError:
            raise WelcomeTimeout(f"no connection_established within {WELCOME_TIMEOUT:g} s") from None
    except BaseException:
        ws.transport.abort()
        raise
    return ws


async def attempt(url: str, user: str, batch: bool) -> Peer | None:
    """One login; a failure is counted by kind (one line per kind) and gives None."""
    stats = Run.stats
    try:
        if Run.gate is not None:
            async with Run.gate:
                ws = await login(url, user, batch)
        else:
            ws = await login(url, user, batch)
        stats["logins"] += 1
        return ws
    except WelcomeTimeout:
        stats["welcome timed out"] += 1
    except TimeoutError:
        stats["handshake timed out"] += 1  # websockets: "timed out during opening handshake"
    except ConnectionRefusedError:
        stats["refused"] += 1  # the server is down: expected, not a failure
    except (OSError, InvalidHandshake, WebSocketException, RuntimeError) as exc:
        stats["failed"] += 1
        key = re.sub(r"u\d{5}", "u…", f"failure: {type(exc).__name__}: {exc}")[:160]  # one line per kind of failure
        stats[key] += 1
    return None


async def live(url: str, user: str, batch: bool, conns: dict) -> None:
    """The real client's loop: log in, retrying with backoff until a login succeeds; after a drop wait backoff(0)
    and do the same again."""
    ws, tries = await attempt(url, user, batch), 1
    while True:
        if ws is not None:
            conns[user] = ws
            await ws.wait_closed()
            Peer.done.pop(ws.me, None)
            tries = 0
        await asyncio.sleep(backoff(tries))
        tries += 1
        ws = await attempt(url, user, batch)


def report(lag: LoopLag, cpu: float) -> dict:
    return {"done": list(Peer.done.values()), "stats": dict(Run.stats), "handshakes": Run.handshakes,
            "welcomes": Run.welcomes,
            "cpu": own_cpu() - cpu, "lag": lag.take()}


async def clients(url: str, users: list[str], n: int, batch: bool, timeout: float, setup_timeout: float,
                  progress: bool, pipe) -> None:
    loop = asyncio.get_running_loop()
    Peer.n, Peer.everyone, conns, lag, cpu = n, (1 << n) - 1, {}, LoopLag(progress), own_cpu()
    Run.gate = asyncio.Semaphore(CONCURRENCY)

    async def tell() -> None:
        while True:
            await asyncio.sleep(PROGRESS)
            print(f"    [{users[0]}...] {len(Peer.done):,} / {len(users):,} complete, {dict(Run.stats)}, "
                  f"loop lag {lag.worst:.2f} s", flush=True)

    ticker = asyncio.create_task(tell()) if progress else None
    tasks = [asyncio.create_task(live(url, u, batch, conns)) for u in users]
    try:
        await until(lambda: len(Peer.done) == len(users), setup_timeout, "")
    except TimeoutError:
        pipe.send({"setup failed": report(lag, cpu)})
        return
    pipe.send(report(lag, cpu))  # the first logins: done
    await loop.run_in_executor(None, pipe.recv)  # "storm": the server is about to be killed
    Peer.done.clear()
    Run.stats, Run.handshakes, Run.welcomes, Run.gate = Counter(), [], [], None
    lag.take()
    cpu = own_cpu()
    pipe.send("set")
    try:
        await until(lambda: len(Peer.done) == len(users), timeout, "")
    except TimeoutError:
        pass
    pipe.send(report(lag, cpu))
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    if ticker is not None:
        ticker.cancel()
    for t in tasks:
        t.cancel()
    for ws in conns.values():
        ws.transport.abort()


def client_process(url: str, users: list[str], n: int, batch: bool, timeout: float, setup_timeout: float,
                   progress: bool, pipe) -> None:
    raise_fd_limit()
    asyncio.run(clients(url, users, n, batch, timeout, setup_timeout, progress, pipe))


class QueueWatch(threading.Thread):
    """The deepest the listen socket's accept queue got (ss: Recv-Q of the LISTEN socket), sampled every 50 ms."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.deepest, self.backlog, self.stopping = port, 0, 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            out = subprocess.run(["ss", "-lntH", f"sport = :{self.port}"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                _, queued, backlog, *_ = line.split()
                self.deepest, self.backlog = max(self.deepest, int(queued)), int(backlog)

    def take(self) -> int:
        deepest, self.deepest = self.deepest, 0
        return deepest


def collect(pipes, seconds: float) -> list[dict]:
    results, left = [], list(pipes)
    while left:
        ready = wait(left, seconds)
        if not ready:
            raise RuntimeError("a client process did not report")
        for p in ready:
            results.append(p.recv())
            left.remove(p)
    return results


def summary(results: list[dict], n: int, t0: float, label: str) -> tuple[list[float], Counter]:
    times = [d - t0 for r in results for d in r["done"]]
    stats = sum((Counter(r["stats"]) for r in results), Counter())
    hs = [h for r in results for h in r["handshakes"]]
    ws = [w for r in results for w in r["welcomes"]]
    print(f"\n  {label}")
    print(f"  {'clients complete':<44} {len(times):>8,} / {n:,}")
    if times:
        print(f"  {'per-client time to complete p50 / p99 / max':<44} {pct(times, 50):>8.2f} s / "
              f"{pct(times, 99):.2f} s / {max(times):.2f} s")
    print(f"  {'logins / refused (server down) / failed':<44} {stats['logins']:>8,} / {stats['refused']:,} / "
          f"{stats['failed']:,}")
    print(f"  {'handshake / welcome timeouts':<44} {stats['handshake timed out']:>8,} / "
          f"{stats['welcome timed out']:,}")
    for key in stats:
        if key.startswith("failure:"):
            print(f"    {stats[key]:>6,} x {key}")
    if hs:
        print(f"  {'opening handshake p50 / p99 / max':<44} {pct(hs, 50):>8.2f} s / {pct(hs, 99):.2f} s / "
              f"{max(hs):.2f} s")
    if ws:
        print(f"  {'hello to welcome p50 / p99 / max':<44} {pct(ws, 50):>8.2f} s / {pct(ws, 99):.2f} s / "
              f"{max(ws):.2f} s")
    print(f"  {'client processes: CPU / worst loop lag':<44} {sum(r['cpu'] for r in results):>8.2f} s / "
          f"{max(r['lag'] for r in results):.2f} s")
    return times, stats


def main(n: int, procs: int, batch: bool, timeout: float, setup_timeout: float, tree: str | None,
         progress: bool, cap: int) -> bool:
    ctx = multiprocessing.get_context("spawn")
    print(f"{n:,} {'new (presence_batch)' if batch else 'old (presence)'} clients in {procs} processes; "
          f"storm timeout {timeout:g} s; server {'from ' + tree if tree else 'of this tree'}, "
          f"max_unauthenticated {cap or 'off'}, no cap per address (every client is 127.0.0.1), no rate limit")
    lags = [ctx.RawValue("d", 0.0), ctx.RawValue("d", 0.0)]
    srv = ServerProcess(start_on, 0, tree, lags[0], cap).__enter__()
    url, port = srv.url, int(srv.url.rsplit(":", 1)[1])
    watch = QueueWatch(port)
    pipes, children, new, ok = [], [], None, True
    try:
        for k in range(procs):
            mine, theirs = ctx.Pipe()
            users = [f"u{i:05d}" for i in range(k, n, procs)]
            children.append(ctx.Process(target=client_process,
                                        args=(url, users, n, batch, timeout, setup_timeout, progress, theirs)))
            children[-1].start()
            pipes.append(mine)
        t, overflows, cpu0 = clock(), listen_overflows(), srv.cpu()
        first = collect(pipes, setup_timeout + 60)
        failed = [r["setup failed"] for r in first if "setup failed" in r]
        print(f"  first logins: {'did not finish' if failed else 'all complete'} after {clock() - t:.1f} s; "
              f"server CPU {srv.cpu() - cpu0:.2f} s, worst loop lag {lags[0].value:.2f} s; deepest accept queue "
              f"{watch.take()} (backlog {watch.backlog}); listen overflows {listen_overflows() - overflows:,}",
              flush=True)
        summary([r.get("setup failed", r) for r in first], n, t, "first logins, times from the start")
        if failed:
            return False
        for p in pipes:
            p.send("storm")
        for p in pipes:
            p.recv()
        print("\n  killing the server", flush=True)
        overflows = listen_overflows()
        t0 = clock()
        srv.stop(graceful=False)  # SIGKILL
        new = ServerProcess(start_on, port, tree, lags[1], cap).__enter__()
        listening, cpu_listening = clock() - t0, new.cpu()
        results = collect(pipes, timeout + 30)
        cpu = new.cpu()
        overflows = listen_overflows() - overflows
    finally:
        watch.stopping.set()
        for p in pipes:
            try:
                p.send("stop")
            except OSError:
                pass
        for c in children:
            c.join(10)
            if c.is_alive():
                c.kill()
        srv.stop(graceful=False)
        if new is not None:
            new.stop(graceful=False)
    times, stats = summary(results, n, t0, "storm, times from the kill")
    last = max(times) if len(times) == n else float("inf")
    print(f"  {'new server listening after the kill':<44} {listening:>8.2f} s")
    print(f"  {'listen overflows / deepest accept queue':<44} {overflows:>8,} / {watch.take()} "
          f"(backlog {watch.backlog})")
    print(f"  {'server CPU: start-up / storm / total':<44} {cpu_listening:>8.2f} s / {cpu - cpu_listening:.2f} s / "
          f"{cpu:.2f} s")
    print(f"  {'server worst loop lag in the storm':<44} {lags[1].value:>8.2f} s")
    ok &= verdict("handshakes timed out", f"{stats['handshake timed out']:,}", "0", stats["handshake timed out"] == 0)
    ok &= verdict("welcomes timed out", f"{stats['welcome timed out']:,}", "0", stats["welcome timed out"] == 0)
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
    ap.add_argument("--setup-timeout", type=float, default=900,
                    help="seconds the first logins may take (default 900: old clients at 2,000 cost the server "
                         "about 2 million presence frames)")
    ap.add_argument("--server-tree", metavar="PATH",
                    help="run the server/ and shared/ of this checkout (e.g. a git worktree of an older commit)")
    ap.add_argument("--progress", action="store_true", help=f"a line per client process every {PROGRESS:g} s")
    ap.add_argument("--login-cap", type=int, default=0, metavar="N",
                    help="connections the server lets wait to log in at once, as --max-unauthenticated (default 0: no "
                         "limit; a server's own default is 256); more get HTTP 503 and retry")
    args = ap.parse_args()
    if raise_fd_limit() < args.n + 100:
        raise SystemExit(f"the open-file limit is too low for {args.n} connections")
    tree = args.server_tree and str(__import__("pathlib").Path(args.server_tree).resolve())
    raise SystemExit(0 if main(args.n, args.procs, not args.old_clients, args.timeout, args.setup_timeout, tree,
                               args.progress, args.login_cap) else 1)
