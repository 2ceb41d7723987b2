"""Server RSS per connection after 1,000 relayed ICE candidates per user, without acks (an older client) and with.

The server keeps every numbered message to a user in its replay log, up to queue_limit (1000), for a resume
(docs/protocol.md §2.3); an `ack` lets it drop what the client has. Each mode gets a fresh server process and the
same clients in this one: n users connect and idle (the baseline), pair up into calls, and each sends its partner
1,000 candidates and reads its own 1,000; with acks each acks every 100 messages as the client does (--ack-every),
and once more at the end. A second later the
server's RSS is read again. The machine is shared and noisy, so what to compare is the ratio of the two modes'
figures per connection, from the same run. The replay logs' contents are read out of the server process itself.

RSS is what the server's allocator holds, not what is live: a log emptied by an ack after it filled leaves most of
its memory with the allocator (compare "all read", read before the last ack, with "after"): with --ack-every 0
(one ack, at the end) RSS barely falls, while acking as the client does keeps the logs from filling at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time

from _common import Listener, ServerProcess, gather_limited, join, raise_fd_limit, start_callbox, until
from websockets.protocol import State

CANDIDATES = 1000  # per user, to its partner
CONCURRENCY = 10  # connections being opened at once
WINDOW = 32  # candidates in flight per sender: unbounded, this process reads so far behind that the server's
# pings wait in its buffers past the 10 s ping timeout, and it drops connections
TIMEOUT = 120  # seconds, per phase
SETTLE = 1.0  # seconds between the last frame and an RSS reading


async def start_reporting(pipe) -> tuple[int, object]:
    """start_callbox, and answer each request on `pipe` with (messages, bytes) kept in all replay logs."""
    port, stop = await start_callbox()
    hub = stop.__self__.hub  # stop is the SignalingServer's bound method
    loop = asyncio.get_running_loop()

    def answer() -> None:
        try:
            pipe.recv()
        except EOFError:
            loop.remove_reader(pipe.fileno())
            return
        pipe.send((sum(len(s.replay.entries) for s in hub.sessions.values()), hub.replay.used))

    loop.add_reader(pipe.fileno(), answer)
    return port, stop


class User(Listener):
    """One party to a call. It counts what it is sent as a client counts for hello.received and ack (§2.3):
    every frame but presence, connection_established (taken by join) and ack."""

    received = candidates = errors = 0
    rang = accepted = False
    acked: int | None = None  # the server's count of our frames, from its latest ack
    acked_at = 0  # our count in our latest ack

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrived = asyncio.Event()  # a candidate came

    def on_frame(self, data: bytes) -> None:
        kind = data[9:data.index(b'"', 9)]  # data starts {"type":"
        if kind.startswith(b"presence"):  # presence, or presence_batch for a client that asks (it does not)
            return
        if kind == b"ack":
            self.acked = json.loads(data)["received"]
            return
        self.received += 1
        if kind == b"webrtc_ice_candidate":
            self.candidates += 1
            self.arrived.set()
        elif kind == b"call_incoming":
            self.rang = True
        elif kind == b"call_accepted":
            self.accepted = True
        else:
            self.errors += 1
            print(f"  unexpected: {data[:200]!r}")


def candidates(i: int, to: str) -> list[str]:
    """User i's candidates, each different, ~100 bytes each, as a browser would gather them."""
    out = []
    for k in range(CANDIDATES):
        c = (f"candidate:{(i * 7919 + k * 104729) % 4294967296} {1 + k % 2} udp {2122260223 - k * 256} "
             f"192.168.{i % 250}.{k % 250 + 2} {49152 + (i * CANDIDATES + k) % 16384} typ host generation 0 "
             f"ufrag {i:04x} network-id {1 + k % 3}")
        out.append(json.dumps({"type": "webrtc_ice_candidate", "to": to, "call_id": f"c{i // 2}", "candidate": c,
                               "sdpMid": "0", "sdpMLineIndex": 0}))
    return out


def ack(ws: User):
    ws.acked_at = ws.received
    return ws.send(json.dumps({"type": "ack", "received": ws.received}))


async def measure(n: int, acks: bool, every: int) -> dict:
    mine, theirs = multiprocessing.get_context("spawn").Pipe()

    def logs() -> tuple[int, int]:
        mine.send("stats")
        if not mine.poll(10):
            raise RuntimeError("the server did not report its replay logs")
        return mine.recv()

    users: list[User] = []
    t0 = time.perf_counter()
    with ServerProcess(start_reporting, theirs) as srv:
        try:
            users = await gather_limited((join(srv.url, f"u{i}", create_connection=User) for i in range(n)),
                                         CONCURRENCY)
            await asyncio.sleep(SETTLE)
            before = srv.rss()
            callers, callees = users[0::2], users[1::2]
            for i, a in enumerate(callers):
                await a.send(json.dumps({"type": "call_incoming", "to": f"u{2 * i + 1}", "call_id": f"c{i}",
                                         "media": ["audio"]}))
            await until(lambda: all(b.rang for b in callees), TIMEOUT, "call_incoming at every callee")
            for i, b in enumerate(callees):
                await b.send(json.dumps({"type": "call_accepted", "to": f"u{2 * i}", "call_id": f"c{i}"}))
            await until(lambda: all(a.accepted for a in callers), TIMEOUT, "call_accepted at every caller")
            texts = [candidates(i, f"u{i ^ 1}") for i in range(n)]

            async def send(ws: User, to: User, batch: list[str]) -> None:
                for sent, text in enumerate(batch):
                    while sent - to.candidates >= WINDOW:
                        to.arrived.clear()
                        await to.arrived.wait()
                    if acks and every and ws.received - ws.acked_at >= every:
                        await ack(ws)
                    await ws.send(text)

            t1 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(send(u, users[i ^ 1], texts[i]) for i, u in enumerate(users))),
                                   TIMEOUT)
            await until(lambda: all(u.candidates == CANDIDATES for u in users), TIMEOUT, "every candidate")
            relay = time.perf_counter() - t1
            await asyncio.sleep(SETTLE)
            read, read_logs = srv.rss(), logs()
            if acks:
                for u in users:
                    await ack(u)
                await until(lambda: all(u.acked == CANDIDATES + 1 for u in users), TIMEOUT,
                            "ack from the server counting all our frames (a call message and the candidates)")
                await asyncio.sleep(SETTLE)
            after, after_logs = srv.rss(), logs()
            assert not any(u.errors for u in users), "unexpected frames"
            assert all(u.state is State.OPEN for u in users), "the server dropped connections"
        finally:
            srv.stop(graceful=False)  # what is measured is the server's state, not its shutdown
            for ws in users:
                ws.transport.abort()
            mine.close()
            theirs.close()
    return {"before": before, "read": read, "after": after, "per": (after - before) / n, "read_logs": read_logs,
            "logs": after_logs, "relay": relay, "wall": time.perf_counter() - t0}


async def main(n: int, every: int) -> None:
    modes = {"no acks": False, "acks": True}
    print(f"{n} users ({n // 2} calls), {CANDIDATES:,} candidates sent and received by each; a fresh server per mode; "
          f"with acks, one ack each {f'per {every} messages received, and one ' if every else ''}at the end")
    results = {}
    for name, acks in modes.items():
        results[name] = r = await measure(n, acks, every)
        print(f"  {name}: {r['wall']:.1f} s ({n * CANDIDATES / r['relay']:,.0f} candidates/s relayed)", flush=True)
    mib = 2**20
    print(f"\n  {'mode':<8} {'wall':>7} {'RSS idle':>10} {'all read':>10} {'after':>10} {'per conn':>11}"
          f" {'log msgs read/after':>20} {'log MiB read/after':>19}")
    for name, r in results.items():
        print(f"  {name:<8} {r['wall']:5.1f} s {r['before'] / mib:6.1f} MiB {r['read'] / mib:6.1f} MiB "
              f"{r['after'] / mib:6.1f} MiB {r['per'] / 1024:7.1f} KiB {r['read_logs'][0]:>9,} / {r['logs'][0]:>7,}"
              f" {r['read_logs'][1] / mib:9.1f} / {r['logs'][1] / mib:5.1f}")
    print("  (log MiB as the server counts it: each message's length + 100)")
    a, b = results["acks"]["per"], results["no acks"]["per"]
    print(f"  RSS per connection, acks / no acks: {a / b:.3f}x" if b > 0 else "  no growth without acks to compare")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="users, two to a call (default 200)")
    ap.add_argument("--ack-every", type=int, default=100, metavar="K",
                    help="with acks, ack every K messages received, as the client does (default 100; 0: only once, "
                         "after the last candidate)")
    args = ap.parse_args()
    if args.n < 2 or args.n % 2:
        raise SystemExit("-n must be even and at least 2")
    if raise_fd_limit() < args.n + 100:
        raise SystemExit(f"the open-file limit is too low for {args.n} connections")
    asyncio.run(main(args.n, args.ack_every))
