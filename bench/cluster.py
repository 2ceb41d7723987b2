"""Relay p50/p99 latency of ICE candidates within one node against across two nodes on Redis, and the server CPU per
message that Redis adds.

Three setups, each with the same call pairs, message count and paced rate, in alternating rounds of one run:
  1. one node without --redis, both users of each pair on it (the baseline);
  2. node A of a two-node cluster on a shared Redis, both users on A (the message never leaves A);
  3. the same cluster, caller on node A and callee on node B (A appends to B's inbox stream, B reads it).
A real redis-server (the Debian package) runs on a free loopback port with persistence off, and every node is a
`python -m server` subprocess with no rate limit, so that each has a process of its own (and psutil reads its
CPU time); the clients are raw protocol clients in this process, so that a candidate's send and its receipt are
timed on one clock: the sender writes a perf_counter timestamp and a sequence number into each candidate and the
callee reads them back (presence and other frames are skipped). Server CPU is the sum over the setup's server
processes (both nodes for setups 2 and 3) across the measured rounds; redis-server's is given apart. Every
candidate sent must arrive, once: the run reports any that did not. Run from the repository root:
.venv/bin/python bench/cluster.py [--pairs 20] [--per-pair 1000] [--rate 1000] [--rounds 8] [--server-tree PATH]
--server-tree PATH runs the nodes from another tree (server/ and shared/), e.g. `git archive HEAD server shared`
unpacked somewhere, with the same clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import HOST, Listener, gather_limited, join, own_cpu, pct, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
REDIS = "/usr/bin/redis-server"
MARK = b"candidate:"  # the timestamp follows it, then a space, the sequence number and a space
FILLER = (" 1 udp 2122260223 192.168.178.23 54321 typ host generation 0 ufrag Xy9q network-id 1 network-cost 10" * 3)
FILLER = FILLER[:250 - len("candidate:") - 24]  # 24: timestamp and sequence number: a ~250-character candidate
IDLE = 2.0  # seconds of CPU use measured with every call up and nothing sent
WARMUP = 1.0  # seconds at the paced rate per setup before the first round, not counted
DRAIN = 10.0  # seconds a round waits for its last candidates before it counts the rest as lost
START_TIMEOUT = 15.0  # seconds for a process to come up, or for a call to be established
BUDGET = 115.0  # the whole run stops by then, whatever happens
SETUPS = {1: "one node, no Redis", 2: "cluster, same node", 3: "cluster, across nodes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def describe(tree: Path) -> str:
    """The tree the nodes run from: its git commit, and which of its server files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=10).stdout
    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--", "server", "shared").splitlines()]
    except (OSError, subprocess.SubprocessError):
        head, changed = "", []
    if not head or git("rev-parse", "--show-toplevel").strip() != str(tree.resolve()):
        return f"{tree} (not a git checkout)"
    return f"{tree} at {head}" + (f", with uncommitted changes to {', '.join(changed)}" if changed else "")


def cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


# ---------------------------------------------------------------- processes: redis-server and the nodes


class Redis:
    def __init__(self, tmp: str):
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc = subprocess.Popen([REDIS, "--bind", HOST, "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", tmp, "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)

    async def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(b"PING\r\n")
                pong = await asyncio.wait_for(reader.readline(), 1.0)
                writer.close()
                if pong.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Node:
    """`python -m server` in a subprocess; its stderr is read throughout, warnings and errors kept."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, url: str):
        self.name, self.proc, self.url = name, proc, url
        self.ps = psutil.Process(proc.pid)
        self.complaints: list[str] = []
        self._drain = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, data_dir: str, redis: str | None, tree: Path) -> Node:
        args = ["--port", "0", "--rate-limit", "0", "--data-dir", data_dir, "--max-unauthenticated", "0",
                "--max-unauthenticated-per-ip", "0", "--log-level", "INFO"]
        if redis:
            args += ["--redis", redis]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", *args, cwd=tree,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while line := (await proc.stderr.readline()).decode():
                    if m := re.search(r"listening on (ws://\S+)", line):
                        return cls(name, proc, m.group(1))
        except TimeoutError:
            pass
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"node {name} did not start")

    async def _read(self) -> None:
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if " WARNING " in text or " ERROR " in text or text.startswith("Traceback"):
                self.complaints.append(text)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._drain


# ---------------------------------------------------------------- clients: one call, a caller sending, a callee timing


class Conn(Listener):
    """A client connection: candidates go to its pair's tally as soon as they are parsed, other frames to `queue`
    while `collect` is on (call setup), and are dropped after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pair: Pair | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.collect = True

    def on_frame(self, data: bytes) -> None:
        now = time.perf_counter()
        i = data.find(MARK)
        if i >= 0 and self.pair is not None:
            self.pair.arrive(data, i + len(MARK), now)
        elif self.collect:
            self.queue.put_nowait(json.loads(data))

    async def expect(self, match) -> dict:
        while not match(msg := await self.queue.get()):
            pass
        return msg


class Pair:
    def __init__(self, setup: int, i: int, tx: Conn, rx: Conn, a: str, b: str):
        self.setup, self.tx, self.rx, self.a, self.b = setup, tx, rx, a, b
        self.call_id = f"s{setup}-{i}"
        head = json.dumps({"type": "webrtc_ice_candidate", "to": b, "call_id": self.call_id, "sdpMid": "0",
                           "sdpMLineIndex": 0, "candidate": ""})[:-2]
        self.head, self.tail = head + MARK.decode(), FILLER + '"}'
        self.from_ = f'"from":"{a}"'.encode()
        self.seq = 0
        self.seen: set[int] = set()
        self.duplicates = self.wrong_from = 0
        self.arrived = asyncio.Event()
        rx.pair = self
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.sent = self.received = 0

    def send(self):
        self.seq += 1
        self.sent += 1
        return self.tx.send(f"{self.head}{time.perf_counter()!r} {self.seq}{self.tail}")

    def arrive(self, data: bytes, start: int, now: float) -> None:
        space = data.index(b" ", start)
        seq = int(data[space + 1:data.index(b" ", space + 1)])
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        self.latencies.append(now - float(data[start:space]))
        self.received += 1
        self.wrong_from += self.from_ not in data and data.replace(b" ", b"").find(self.from_) < 0
        self.arrived.set()

    async def wait_all(self) -> None:
        while self.received < self.sent:
            self.arrived.clear()
            await self.arrived.wait()


async def establish(caller: Conn, callee: Conn, a: str, b: str, call_id: str) -> int:
    """a calls b and b accepts. A call_incoming to a user the caller's node does not know of yet (a node learns of
    the other's users at its heartbeat) gets user_offline: try again. Returns how many tries it took."""
    async with asyncio.timeout(START_TIMEOUT):
        tries = 0
        while True:
            tries += 1
            await caller.send(json.dumps({"type": "call_incoming", "to": b, "call_id": call_id, "media": ["audio"]}))
            rang = asyncio.create_task(callee.expect(lambda m: m["type"] == "call_incoming" and
                                                     m.get("call_id") == call_id))
            refused = asyncio.create_task(caller.expect(lambda m: m["type"] == "error"))
            done, _ = await asyncio.wait({rang, refused}, return_when=asyncio.FIRST_COMPLETED)
            (rang if refused in done else refused).cancel()
            if rang in done:
                break
            error = refused.result()
            if error.get("code") != "user_offline":
                raise RuntimeError(f"{a} calling {b}: {error}")
            await asyncio.sleep(0.1)
        await callee.send(json.dumps({"type": "call_accepted", "to": a, "call_id": call_id}))
        await caller.expect(lambda m: m["type"] == "call_accepted" and m.get("call_id") == call_id)
    caller.collect = callee.collect = False
    return tries


async def make_pairs(setup: int, n: int, caller_url: str, callee_url: str) -> tuple[list[Pair], int]:
    async def one(i: int) -> tuple[Pair, int]:
        a, b = f"s{setup}caller{i}", f"s{setup}callee{i}"
        tx = await join(caller_url, a, create_connection=Conn)
        rx = await join(callee_url, b, create_connection=Conn)
        pair = Pair(setup, i, tx, rx, a, b)
        return pair, await establish(tx, rx, a, b, pair.call_id)

    made = await gather_limited((one(i) for i in range(n)), 10)
    return [p for p, _ in made], max(t for _, t in made)


# ---------------------------------------------------------------- one round: paced candidates, CPU before and after


async def paced(pairs: list[Pair], rate: int, count: int) -> tuple[int, int]:
    """Send `count` candidates at `rate` a second, round-robin over the pairs; wait for them; (sent, received)."""
    for p in pairs:
        p.reset()
    t0 = time.perf_counter()
    for k in range(count):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await pairs[k % len(pairs)].send()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait_all() for p in pairs)), DRAIN)
    except TimeoutError:
        pass
    return sum(p.sent for p in pairs), sum(p.received for p in pairs)


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.sent = self.received = 0
        self.server_cpu = self.redis_cpu = self.client_cpu = self.seconds = 0.0
        self.rounds: list[tuple[float, float]] = []  # per round: p50, p99
        self.by_node: dict[str, float] = {}  # server CPU seconds per node


async def measure(pairs: list[Pair], nodes: list[Node], redis: Redis, rate: int, count: int, tally: Tally) -> None:
    s0, r0, c0, t0 = [cpu(n.ps) for n in nodes], cpu(redis.ps), own_cpu(), time.perf_counter()
    sent, received = await paced(pairs, rate, count)
    tally.seconds += time.perf_counter() - t0
    for n, before in zip(nodes, s0, strict=True):
        used = cpu(n.ps) - before
        tally.server_cpu += used
        tally.by_node[n.name] = tally.by_node.get(n.name, 0.0) + used
    tally.redis_cpu += cpu(redis.ps) - r0
    tally.client_cpu += own_cpu() - c0
    tally.sent += sent
    tally.received += received
    lat = [x for p in pairs for x in p.latencies]
    tally.latencies += lat
    tally.rounds.append((pct(lat, 50), pct(lat, 99)) if lat else (float("nan"), float("nan")))


# ---------------------------------------------------------------- main


def ms(s: float) -> str:
    return f"{s * 1000:.2f}"


async def main(args) -> bool:
    tmp = tempfile.mkdtemp(prefix="callbox-cluster-bench-")
    redis = Redis(tmp)
    nodes: list[Node] = []
    conns: list[Conn] = []
    try:
        async with asyncio.timeout(BUDGET):
            await redis.ready()
            for name, url in (("solo", None), ("A", redis.url), ("B", redis.url)):
                os.mkdir(f"{tmp}/{name}")
                nodes.append(await Node.start(name, f"{tmp}/{name}", url, args.server_tree))
            solo, a, b = nodes
            setups = {1: (solo.url, solo.url, [solo]), 2: (a.url, a.url, [a, b]), 3: (a.url, b.url, [a, b])}
            pairs: dict[int, list[Pair]] = {}
            for s, (caller_url, callee_url, _) in setups.items():
                pairs[s], tries = await make_pairs(s, args.pairs, caller_url, callee_url)
                conns += [c for p in pairs[s] for c in (p.tx, p.rx)]
                print(f"setup {s}: {args.pairs} calls established" + (f" (up to {tries} tries: user_offline until "
                                                                      "the nodes met)" if tries > 1 else ""),
                      flush=True)
            per_round = args.pairs * args.per_pair // args.rounds
            procs = {n.name: n.ps for n in nodes} | {"redis": redis.ps}
            before, t0 = {k: cpu(v) for k, v in procs.items()}, time.perf_counter()
            await asyncio.sleep(IDLE)
            idle = {k: (cpu(v) - before[k]) / (time.perf_counter() - t0) for k, v in procs.items()}
            print("idle, calls up: " + ", ".join(f"{k} {v:.1%} of a core" for k, v in idle.items()), flush=True)
            for s in setups:  # warm up: not counted
                await paced(pairs[s], args.rate, int(args.rate * WARMUP))
            tallies = {s: Tally() for s in setups}
            for r in range(args.rounds):  # alternate, and rotate the order, so drift on the machine hits all alike
                order = list(setups)[r % 3:] + list(setups)[:r % 3]
                for s in order:
                    await measure(pairs[s], setups[s][2], redis, args.rate, per_round, tallies[s])
                    p50, p99 = tallies[s].rounds[-1]
                    print(f"round {r + 1} setup {s} ({SETUPS[s]:<22}): p50 {ms(p50)} ms  p99 {ms(p99)} ms  "
                          f"received {tallies[s].received}/{tallies[s].sent}", flush=True)
            for c in conns:
                c.collect = False
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    finally:
        for n in nodes:
            await n.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------ the table
    base = tallies[1]
    k = lambda t, v: v / t.sent * 1000 if t.sent else float("nan")  # noqa: E731  per 1,000 messages
    print(f"\nserver tree: {describe(args.server_tree)}")
    print(f"{args.pairs} pairs, ~{len(pairs[1][0].head) + 24 + len(FILLER) + 2}-byte messages, "
          f"{args.per_pair} per pair per setup ({args.pairs * args.per_pair:,} a setup) at {args.rate}/s in all, "
          f"{args.rounds} alternating rounds; CPU in seconds per 1,000 messages")
    head = (f"{'setup':<26} {'sent':>7} {'recv':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'srv CPU':>8} "
            f"{'redis CPU':>9} {'client':>6} {'p50 x':>6} {'p99 x':>6} {'CPU x':>6}")
    print(head)
    print("-" * len(head))
    stats = {}
    for s, t in tallies.items():
        p50, p99 = pct(t.latencies, 50), pct(t.latencies, 99)
        cpu_k = k(t, t.server_cpu)
        stats[s] = (p50, p99, cpu_k, k(t, t.redis_cpu))
        print(f"{s} {SETUPS[s]:<24} {t.sent:>7} {t.received:>7} {ms(p50):>7} {ms(p99):>7} {ms(max(t.latencies)):>7} "
              f"{cpu_k:>8.4f} {k(t, t.redis_cpu):>9.4f} {t.client_cpu / t.seconds:>6.0%} "
              f"{p50 / pct(base.latencies, 50):>5.2f}x {p99 / pct(base.latencies, 99):>5.2f}x "
              f"{cpu_k / k(base, base.server_cpu):>5.2f}x")
    print("(srv CPU: the setup's server processes, both nodes in 2 and 3; client: this process's CPU over the "
          "rounds, near 100% it sets the pace; x: against setup 1)")
    print("server CPU by node, s per 1,000 messages: " + ";  ".join(
        f"{s}: " + ", ".join(f"{n} {k(t, v):.4f}" for n, v in t.by_node.items()) for s, t in tallies.items()))
    print("per-round p99 ms: " + ";  ".join(f"{s}: " + " ".join(ms(r[1]) for r in t.rounds)
                                           for s, t in tallies.items()))
    ok = True
    for s, t in tallies.items():
        lost = t.sent - t.received
        dups = sum(p.duplicates for p in pairs[s])
        wrong = sum(p.wrong_from for p in pairs[s])
        if lost or dups or wrong:
            ok = False
            print(f"setup {s}: {lost} candidates lost, {dups} duplicated, {wrong} without the caller's \"from\"")
    for n in nodes:
        if n.complaints:
            print(f"node {n.name}: {len(n.complaints)} warnings/errors, e.g. {n.complaints[0]}")
    (b50, b99, bcpu, _), (s50, s99, scpu, sred), (x50, x99, xcpu, xred) = stats[1], stats[2], stats[3]
    print(f"\nREADME: across two nodes on Redis (bench/cluster.py, {args.pairs} pairs, {args.rate} candidates/s) a "
          f"candidate takes p50 {ms(x50)} ms / p99 {ms(x99)} ms against {ms(b50)} / {ms(b99)} ms on one node "
          f"without Redis ({ms(s50)} / {ms(s99)} ms within a node of the cluster); server CPU per 1,000 messages "
          f"{xcpu:.3f} s across nodes and {scpu:.3f} s within one, against {bcpu:.3f} s "
          f"({xcpu / bcpu:.2f}x, {scpu / bcpu:.2f}x), plus {xred:.3f} s and {sred:.3f} s of redis-server.")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20, help="calls per setup (default 20)")
    ap.add_argument("--per-pair", type=int, default=1000, help="candidates per pair per setup (default 1000)")
    ap.add_argument("--rate", type=int, default=1000, help="candidates a second over all pairs (default 1000)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds per setup, alternating (default 8)")
    ap.add_argument("--server-tree", type=Path, default=ROOT, metavar="PATH",
                    help="run the nodes' server/ and shared/ from this tree (default: this checkout)")
    args = ap.parse_args()
    if not os.path.exists(REDIS):
        raise SystemExit(f"{REDIS} is missing: apt-get install redis-server")
    expected = 3 * (args.pairs * args.per_pair / args.rate + WARMUP) + IDLE
    if expected > BUDGET - 20:
        raise SystemExit(f"{expected:.0f} s of sending does not fit the {BUDGET:.0f}-second budget: lower --per-pair "
                         "or raise --rate")
    raise_fd_limit()
    raise SystemExit(0 if asyncio.run(main(args)) else 1)
