"""Relay throughput and p50/p99 latency of ~250-byte ICE candidates between call pairs, against a bare forwarder.

Each server (Callbox, and a minimal websockets forwarder written below) runs in a process of its own and the
clients in this one: sharing one event loop would charge client work to the server and let each side stall the
other, while two processes on two cores each get a core. Both servers see the same clients, messages and load in
alternating rounds of the same run, and throughput is reported as a ratio; so is server CPU time per message, which
a busy machine disturbs less. Client CPU is printed too: near 100% it is the clients that set the pace. Latency
comes from a perf_counter (CLOCK_MONOTONIC, system-wide) timestamp that the sender writes into each candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from _common import (
    HOST,
    ServerProcess,
    gather_limited,
    join,
    ms,
    own_cpu,
    pct,
    raise_fd_limit,
    start_call,
    start_callbox,
    verdict,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve

PAIRS = 8  # calls, each relaying one way, caller -> callee
WINDOW = 32  # candidates in flight per pair in the flood, so buffers stay bounded
FLOOD = 20_000  # candidates per flood, over all pairs
PACED_RATE = 1000  # candidates per second, over all pairs
PACED_SECONDS = 3  # per round
TIMEOUT = 60  # no phase may take longer
MARK = '"candidate:'  # the timestamp follows it, up to the next space
FILLER = (" 1 udp 2122260223 192.168.178.23 54321 typ host generation 0 ufrag Xy9q network-id 1 network-cost 10" * 3)
FILLER = FILLER[:250 - len("candidate:") - 18]  # 18: the timestamp, so the candidate is ~250 characters


# ---------------------------------------------------------------- the baseline: a bare websockets relay


async def start_bare_relay() -> tuple[int, object]:
    """Clients connect to /a<i> and /b<i>; every message from one of them goes, unchanged, to the other."""
    peers: dict[str, object] = {}

    async def forward(ws) -> None:
        me = ws.request.path
        other = ("/b" if me[1] == "a" else "/a") + me[2:]
        peers[me] = ws
        await ws.send("ready")  # the client waits for this, so nobody sends to an unregistered peer
        try:
            async for msg in ws:
                await peers[other].send(msg)
        finally:
            del peers[me]

    server = await serve(forward, HOST, 0, compression=None)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], stop


async def join_bare(url: str, path: str) -> ClientConnection:
    ws = await connect(url + path, compression=None, ping_interval=None)
    assert await ws.recv() == "ready"
    return ws


# ---------------------------------------------------------------- one call: a sender, a receiver, timestamps


class Pair:
    def __init__(self, tx: ClientConnection, rx: ClientConnection, to: str, call_id: str):
        self.tx, self.rx = tx, rx
        head = json.dumps({"type": "webrtc_ice_candidate", "to": to, "call_id": call_id, "sdpMid": "0",
                           "sdpMLineIndex": 0, "candidate": ""})[:-2]
        self.head, self.tail = head + MARK[1:], FILLER + '"}'
        self.arrived = asyncio.Event()
        self.reset()
        self.tasks = [asyncio.create_task(self._receive(rx)), asyncio.create_task(self._receive(tx))]

    def send(self):
        return self.tx.send(f"{self.head}{time.perf_counter()!r}{self.tail}")

    async def _receive(self, ws: ClientConnection) -> None:
        """Time every candidate that arrives; skip anything else (presence). Keeps both sides read."""
        async for msg in ws:
            i = msg.find(MARK)
            if i >= 0:
                start = i + len(MARK)
                self.latencies.append(time.perf_counter() - float(msg[start:msg.index(" ", start)]))
                self.received += 1
                self.arrived.set()

    async def wait_below(self, n: int) -> None:
        """Wait until fewer than n candidates are in flight (sent - received)."""
        while self.sent - self.received >= n:
            self.arrived.clear()
            await self.arrived.wait()

    def reset(self) -> None:
        self.latencies, self.received, self.sent = [], 0, 0


async def callbox_pairs(url: str) -> list[Pair]:
    pairs = []
    for i in range(PAIRS):
        a, b = await join(url, f"a{i}"), await join(url, f"b{i}")
        await start_call(a, f"a{i}", b, f"b{i}", f"c{i}")
        pairs.append(Pair(a, b, f"b{i}", f"c{i}"))
    return pairs


async def bare_pairs(url: str) -> list[Pair]:
    pairs = []
    for i in range(PAIRS):
        a, b = await join_bare(url, f"/a{i}"), await join_bare(url, f"/b{i}")
        pairs.append(Pair(a, b, f"b{i}", f"c{i}"))
    return pairs


# ---------------------------------------------------------------- the two measurements


async def flood(pairs: list[Pair], srv: ServerProcess, total: int) -> dict:
    """Every pair sends as fast as the relay lets it, WINDOW in flight; returns throughput and CPU use."""
    per = total // len(pairs)
    for p in pairs:
        p.reset()

    async def run(p: Pair) -> None:
        for _ in range(per):
            await p.wait_below(WINDOW)
            await p.send()
            p.sent += 1
        await p.wait_below(1)

    cpu_s, cpu_c, t0 = srv.cpu(), own_cpu(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run(p) for p in pairs)), TIMEOUT)
    elapsed = time.perf_counter() - t0
    return {"rate": per * len(pairs) / elapsed, "server_cpu": (srv.cpu() - cpu_s) / elapsed,
            "client_cpu": (own_cpu() - cpu_c) / elapsed}


async def paced(pairs: list[Pair], rate: int, seconds: float) -> list[float]:
    """Send `rate` candidates a second in all, round-robin over the pairs; return every latency."""
    for p in pairs:
        p.reset()
    t0 = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        p = pairs[k % len(pairs)]
        await p.send()
        p.sent += 1
    for p in pairs:
        await asyncio.wait_for(p.wait_below(1), TIMEOUT)
    return [x for p in pairs for x in p.latencies]


# ---------------------------------------------------------------- main


async def bystanders(url: str, n: int) -> list[asyncio.Task]:
    """n idle users on the Callbox server, each reading what it gets; returns once their presences are read."""
    heard = [0]

    async def listen(ws: ClientConnection) -> None:
        async for _ in ws:
            heard[0] += 1

    conns = await gather_limited((join(url, f"idle{i}") for i in range(n)), 10)
    tasks = [asyncio.create_task(listen(ws)) for ws in conns]
    async with asyncio.timeout(TIMEOUT * 5):
        while heard[0] < n * (n - 1) // 2:  # each was announced to those before it
            await asyncio.sleep(0.1)
    return tasks


async def main(rounds: int, idle: int) -> bool:
    with ServerProcess(start_bare_relay) as bare_srv, ServerProcess(start_callbox) as cb_srv:
        servers = {"bare": bare_srv, "callbox": cb_srv}
        idlers = await bystanders(cb_srv.url, idle)
        pairs = {"bare": await bare_pairs(bare_srv.url), "callbox": await callbox_pairs(cb_srv.url)}
        for name in servers:
            await flood(pairs[name], servers[name], FLOOD // 10)  # warm up
        floods: dict[str, list[dict]] = {name: [] for name in servers}
        p99s: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(rounds):  # alternate, so noise from the rest of the machine hits both alike
            for name in servers:
                f = await flood(pairs[name], servers[name], FLOOD)
                lat = await paced(pairs[name], PACED_RATE, PACED_SECONDS)
                floods[name].append(f)
                p99s[name].append(pct(lat, 99))
                print(f"round {r + 1} {name:>8}: {f['rate']:6.0f} msg/s, server CPU {f['server_cpu']:4.0%} "
                      f"= {f['server_cpu'] / f['rate'] * 1e6:4.1f} us/msg, client CPU {f['client_cpu']:4.0%};  "
                      f"at {PACED_RATE}/s: p50 {ms(pct(lat, 50))}  p99 {ms(pct(lat, 99))}  max {ms(max(lat))}",
                      flush=True)
        for ps in pairs.values():
            for p in ps:
                await p.tx.close()
                await p.rx.close()
        for task in idlers:
            task.cancel()
        if idle:
            cb_srv.stop(graceful=False)  # a graceful stop would announce each idle user's departure to the rest

    best = {name: max(f["rate"] for f in fl) for name, fl in floods.items()}
    cost = {name: pct([f["server_cpu"] / f["rate"] for f in fl], 50) for name, fl in floods.items()}
    p99 = {name: pct(v, 50) for name, v in p99s.items()}
    size = len(pairs["callbox"][0].head) + 18 + len(FILLER) + 2
    print(f"\n{PAIRS} pairs{f' (and {idle} idle users on callbox)' if idle else ''}, ~{size}-byte messages; "
          f"{rounds} rounds of a {FLOOD:,}-message flood and {PACED_SECONDS} s paced at {PACED_RATE}/s")
    for name in servers:
        print(f"  {name:>8}: best flood {best[name]:6.0f} msg/s, median server CPU {cost[name] * 1e6:4.1f} us/msg, "
              f"median p99 at {PACED_RATE}/s {ms(p99[name])}")
    print(f"  server CPU per message, bare / callbox: {cost['bare'] / cost['callbox']:.2f}x (the capacity ratio when "
          f"each server has a core to itself; steadier than throughput on a busy machine)")
    ratio = best["callbox"] / best["bare"]
    ok = verdict("throughput, callbox / bare relay", f"{ratio:.2f}x", ">= 0.75x", ratio >= 0.75)
    ok &= verdict(f"callbox p99 latency at {PACED_RATE} msg/s", ms(p99["callbox"]), "<= 5 ms",
                  p99["callbox"] <= 0.005)
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per server, alternating (default 5)")
    ap.add_argument("--idle", type=int, default=0, metavar="N",
                    help="also keep N idle users connected to the Callbox server (default 0)")
    args = ap.parse_args()
    raise_fd_limit()
    raise SystemExit(0 if asyncio.run(main(args.rounds, args.idle)) else 1)
