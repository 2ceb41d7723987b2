"""Server RSS per idle, confirmed connection with 5,000 of them open, permessage-deflate off and on."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

from _common import Listener, ServerProcess, gather_limited, join, own_cpu, raise_fd_limit, start_callbox, verdict
from websockets.protocol import State

# The run is long: every connect is announced to everyone already there, n(n-1)/2 = 12.5 million presence frames
# per mode for n = 5,000, and the server spends 20-40 us of CPU on each. Both modes run at once, each in a client and
# a server process of its own; on two busy cores that took about 15 minutes.
TARGET = 20 * 1024  # bytes of server RSS per connection
CONCURRENCY = 10  # connections being opened at once; many more and handshakes wait past the server's 10 s
TIMEOUT = 1800  # seconds, per mode, for opening every connection and reading the presences that causes


class Idle(Listener):
    """An idle user: it only counts what it is told (presences), in all Idle connections together."""

    presences = 0

    def on_frame(self, data: bytes) -> None:
        Idle.presences += 1


async def measure(n: int, deflate: bool) -> dict:
    mode = f"deflate {'on' if deflate else 'off'}"
    with ServerProcess(start_callbox, deflate) as srv:
        warm = await join(srv.url, "warmup", deflate=deflate)  # one user in and out: lazily built state
        await warm.send('{"type":"bye"}')
        await warm.wait_closed()
        await asyncio.sleep(0.5)
        before, cpu, t0 = srv.rss(), srv.cpu(), time.perf_counter()
        expected, conns = n * (n - 1) // 2, []  # each new user is announced to every user before it

        async def progress() -> None:
            while True:
                await asyncio.sleep(30)
                print(f"  {mode}: {time.perf_counter() - t0:4.0f} s, {len(conns) or '...'} connections, "
                      f"{Idle.presences / expected:4.0%} of presences read, server RSS {srv.rss() / 2**20:.0f} MiB",
                      flush=True)
                if any(ws.state is not State.OPEN for ws in conns):
                    raise RuntimeError("the server dropped connections")

        ticker = asyncio.create_task(progress())
        try:
            async with asyncio.timeout(TIMEOUT):
                conns = await gather_limited(
                    (join(srv.url, f"user{i}", deflate=deflate, create_connection=Idle) for i in range(n)), CONCURRENCY)
                while Idle.presences < expected and not ticker.done():
                    await asyncio.sleep(0.1)
            if ticker.done():
                ticker.result()  # raises what it found
            elapsed, cpu = time.perf_counter() - t0, srv.cpu() - cpu
            await asyncio.sleep(1)
            after = srv.rss()
            assert all(ws.state is State.OPEN for ws in conns), "the server dropped connections"
        finally:
            ticker.cancel()
            srv.stop(graceful=False)  # what is measured is the server's state, not its shutdown with n users
            for ws in conns:
                ws.transport.abort()
    print(f"  {mode}: done in {elapsed:.0f} s (server CPU {cpu:.0f} s, clients {own_cpu():.0f} s), "
          f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB", flush=True)
    return {"per": (after - before) / n, "before": before, "after": after}


def run_mode(n: int, deflate: bool, pipe) -> None:
    """One mode, in a process of its own: its clients then do not compete for one event loop with the other's."""
    raise_fd_limit()
    try:
        pipe.send(asyncio.run(measure(n, deflate)))
    except BaseException as exc:
        pipe.send(f"{type(exc).__name__}: {exc}")
        raise


def main(n: int, modes: list[bool]) -> bool:
    print(f"{n:,} connections per mode, {n * (n - 1) // 2:,} presences each; modes run at once, each in its own "
          f"client and server process (RSS does not depend on speed)")
    ctx = multiprocessing.get_context("spawn")
    runs = []
    for deflate in modes:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=run_mode, args=(n, deflate, theirs))
        proc.start()
        runs.append((deflate, proc, mine))
    ok = True
    results = {}
    for deflate, proc, pipe in runs:
        result = pipe.recv() if pipe.poll(TIMEOUT + 120) else "no result in time"
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        results[deflate] = result
    print()
    for deflate, result in results.items():
        label = f"server RSS per connection, deflate {'on' if deflate else 'off'}"
        if isinstance(result, str):
            ok &= verdict(label, "error", "<= 20 KiB", False)
            print(f"    {result}")
        else:
            ok &= verdict(label, f"{result['per'] / 1024:.1f} KiB", "<= 20 KiB", result["per"] <= TARGET)
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5000, help="connections (default 5000)")
    ap.add_argument("--deflate", choices=["off", "on", "both"], default="both",
                    help="permessage-deflate: measure with it off, on, or both (default both, at once)")
    args = ap.parse_args()
    limit = raise_fd_limit()
    if limit < args.n + 100:
        raise SystemExit(f"the open-file limit is {limit}; {args.n} connections need more")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.deflate]
    raise SystemExit(0 if main(args.n, modes) else 1)
