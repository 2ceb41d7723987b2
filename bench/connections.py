"""Server RSS per idle, confirmed connection with 5,000 of them open, permessage-deflate off and on."""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import ServerProcess, gather_limited, join, raise_fd_limit, start_callbox, verdict

TARGET = 20 * 1024  # bytes of server RSS per connection
CONCURRENCY = 100  # connections being opened at once
TIMEOUT = 240  # seconds for opening every connection and draining the presence they cause


class Crowd:
    """N clients that keep reading: each new user is announced to everyone before it, N(N-1)/2 presences in all.

    They must all be read, or what we measure is the server's write buffers for them."""

    def __init__(self):
        self.presences = 0
        self.conns = []
        self.readers = []

    async def add(self, url: str, user_id: str, deflate: bool) -> None:
        ws = await join(url, user_id, deflate=deflate)
        self.conns.append(ws)
        self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws) -> None:
        async for _ in ws:
            self.presences += 1

    async def drained(self, expected: int) -> None:
        while self.presences < expected:
            await asyncio.sleep(0.1)

    def abort(self) -> None:
        for ws in self.conns:
            ws.transport.abort()
        for t in self.readers:
            t.cancel()


async def measure(n: int, deflate: bool) -> float:
    with ServerProcess(start_callbox, deflate) as srv:
        warm = Crowd()  # one user in and out, so lazily built state is in the baseline
        await warm.add(srv.url, "warmup", deflate)
        await warm.conns[0].send('{"type":"bye"}')
        await warm.conns[0].wait_closed()
        await asyncio.sleep(0.5)
        before = srv.rss()

        crowd, t0 = Crowd(), time.perf_counter()
        try:
            async with asyncio.timeout(TIMEOUT):
                await gather_limited((crowd.add(srv.url, f"user{i}", deflate) for i in range(n)), CONCURRENCY)
                opened = time.perf_counter() - t0
                await crowd.drained(n * (n - 1) // 2)
            drained = time.perf_counter() - t0
            await asyncio.sleep(1)
            after = srv.rss()
            assert len(srv.ps.net_connections("tcp")) >= n
        finally:
            srv.stop(graceful=False)  # a graceful stop announces each departure to everyone left: O(N^2) again
            crowd.abort()
    per = (after - before) / n
    print(f"deflate {'on ' if deflate else 'off'}: {n:,} connections open in {opened:.1f} s, "
          f"{crowd.presences:,} presences drained in {drained:.1f} s; "
          f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB = {per / 1024:.1f} KiB per connection")
    return per


async def main(n: int) -> bool:
    results = {deflate: await measure(n, deflate) for deflate in (False, True)}
    print()
    ok = True
    for deflate, per in results.items():
        ok &= verdict(f"server RSS per connection, deflate {'on' if deflate else 'off'}", f"{per / 1024:.1f} KiB",
                      "<= 20 KiB", per <= TARGET)
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5000, help="connections (default 5000)")
    args = ap.parse_args()
    limit = raise_fd_limit()
    if limit < args.n + 100:
        raise SystemExit(f"the open-file limit is {limit}; {args.n} connections need more")
    raise SystemExit(0 if asyncio.run(main(args.n)) else 1)
