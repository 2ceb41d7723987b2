"""LAN failover: the host SIGKILLed until the survivors share one server, five apps started together until one
server, and an idle client's CPU with browsing; each against a baseline in the same run.

Apps run as `callbox --headless --events` processes in network namespaces that have only loopback
(tests/e2e/lanlab.py): nothing leaves the machine. Needs root. Run from the repository root:
    .venv/bin/python bench/lan_failover.py [--trials 20] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.lan_nodes import Node, host_of, one_server  # noqa: E402
from tests.e2e.lanlab import Lan  # noqa: E402


def spread(times: list[float]) -> str:
    return (f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s, best {min(times):.2f} s "
            f"(n={len(times)})")


async def to_connected(args: tuple[str, ...]) -> float:
    """Baseline: launch to online for one app whose server is configured (no browsing, no choice)."""
    async with Lan() as lan:
        server = await lan.spawn(sys.executable, "-m", "server", "--port", "9000", name="server")
        await asyncio.sleep(1.0)  # the server is up long before the app has imported aiortc
        started = time.monotonic()
        node = await Node.start(lan, "solo", "--server", "ws://127.0.0.1:9000", *args)
        await node.proc.wait_event("connected", 30)
        took = time.monotonic() - started
        await node.proc.terminate()
        await server.terminate()
        return took


async def failover_trial() -> float:
    async with Lan() as lan:
        nodes = await asyncio.gather(*(Node.start(lan, u) for u in ("ann", "ben", "cat")))
        first, _ = await one_server(nodes, 20)
        await asyncio.sleep(1.0)
        host = await host_of(nodes)
        host.proc.kill()
        killed = time.monotonic()
        _, at = await one_server([n for n in nodes if n is not host], 20, other_than=first)
        return at - killed


async def five_together() -> float:
    async with Lan() as lan:
        started = time.monotonic()
        nodes = await asyncio.gather(*(Node.start(lan, f"u{i}") for i in range(5)))
        spawned = time.monotonic() - started
        assert spawned < 0.1, f"the five took {spawned:.3f} s to launch"
        _, at = await one_server(nodes, 30)
        return at - started


def cpu_share(pid: int, seconds: float) -> float:
    """Percent of one core that process `pid` (and its children) used over `seconds`."""
    proc = psutil.Process(pid)

    def used() -> float:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    before, t0 = used(), time.monotonic()
    time.sleep(seconds)
    return 100 * (used() - before) / (time.monotonic() - t0)


async def idle_cpu(seconds: float) -> tuple[float, float, float]:
    """(a guest that browses, the host, a configured client that does not browse), % of a core while idle."""
    async with Lan() as lan:
        nodes = await asyncio.gather(*(Node.start(lan, u) for u in ("ann", "ben", "cat")))
        await one_server(nodes, 20)
        host = await host_of(nodes)
        guest = next(n for n in nodes if n is not host)
        port = host.events("hosting")[-1]["server"].rsplit(":", 1)[1]
        fixed = await Node.start(lan, "dan", "--server", f"ws://127.0.0.1:{port}")
        await fixed.proc.wait_event("connected", 30)
        await asyncio.sleep(3)  # start-up work done
        loop = asyncio.get_running_loop()
        shares = await asyncio.gather(*(loop.run_in_executor(None, cpu_share, n.proc.pid, seconds)
                                        for n in (guest, host, fixed)))
        return tuple(shares)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--together", type=int, default=5, help="trials of five apps started together")
    ap.add_argument("--idle-seconds", type=float, default=30)
    args = ap.parse_args()

    base = [await to_connected(()) for _ in range(3)]
    print(f"baseline, launch to online with a configured server: {spread(base)}")

    times = []
    for i in range(args.trials):
        times.append(await failover_trial())
        print(f"  failover trial {i + 1}: {times[-1]:.2f} s", flush=True)
    print(f"host SIGKILLed until the survivors share one server and see each other: {spread(times)} "
          "(targets: median <= 3 s, worst <= 6 s)")

    together = [await five_together() for _ in range(args.together)]
    extra = statistics.median(together) - statistics.median(base)
    print(f"five apps launched within 100 ms until one server, everyone seeing everyone: {spread(together)} "
          f"(target <= 5 s); that is launch-to-online plus {extra:.2f} s")

    guest, host, fixed = await idle_cpu(args.idle_seconds)
    print(f"idle CPU over {args.idle_seconds:g} s, % of a core: a guest that browses {guest:.2f} %, the host "
          f"(server and advertiser too) {host:.2f} %, a configured client that does not browse {fixed:.2f} % "
          "(target: <= 0.5 %)")


if __name__ == "__main__":
    asyncio.run(main())
