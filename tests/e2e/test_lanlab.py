"""The namespace harness itself: a Lan has only loopback, its processes report events and never outlive it,
and mDNS discovery with its default interfaces finds a server inside one Lan, and across islands only when joined.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from tests.e2e.lanlab import GRACE, HOST_ADDRESS, ISLAND_ADDRESSES, LINE_LIMIT, LabError, Lan, islands, require_netns

PY = sys.executable

ADVERTISE = """
import asyncio, json, sys
from server.discovery import Advertiser

async def main():
    server = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    advertiser = Advertiser()
    await advertiser.start(port, name=sys.argv[1], version="x")
    print(json.dumps({"event": "advertising", "name": advertiser.name, "port": port,
                      "addresses": advertiser.addresses}))
    await asyncio.Event().wait()

asyncio.run(main())
"""

FIND = """
import asyncio, json
from server.discovery import find_servers

servers = asyncio.run(find_servers(2.0))
print(json.dumps({"event": "found", "servers": [
    {"name": s.name, "host": s.host, "port": s.port, "addresses": list(s.addresses)} for s in servers]}))
"""

REACH = """
import json, socket, sys

try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    print(json.dumps({"event": "reach", "ok": True}))
except OSError as e:
    print(json.dumps({"event": "reach", "ok": False, "error": str(e)}))
"""


async def advertise(lan: Lan, name: str) -> dict:
    proc = await lan.spawn(PY, "-c", ADVERTISE, name, name=f"advertise-{name}")
    return await proc.wait_event("advertising", timeout=15)


async def find(lan: Lan, name: str) -> list[dict]:
    proc = await lan.spawn(PY, "-c", FIND, name=name)
    return (await proc.wait_event("found", timeout=15))["servers"]


async def reaches(lan: Lan, host: str, port: int) -> bool:
    proc = await lan.spawn(PY, "-c", REACH, host, str(port), name=f"reach-{lan.name}")
    return (await proc.wait_event("reach", timeout=10))["ok"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_lan_has_only_loopback_and_its_processes_report_events(tmp_path):
    require_netns()
    script = (
        "import json, socket, sys\n"
        "print(json.dumps({'event': 'interfaces', 'names': [n for _, n in socket.if_nameindex()]}))\n"
        f"print('not json'); print('[1, 2]'); print('x' * {LINE_LIMIT + 1})\n"
        "print('something went wrong', file=sys.stderr)\n"
        "print(json.dumps({'event': 'done'})); sys.exit(3)\n"
    )
    async with Lan(logdir=tmp_path) as lan:
        proc = await lan.spawn(PY, "-c", script, name="reporter")
        assert (await proc.wait_event("interfaces"))["names"] == ["lo"]
        await proc.wait_event("done")
        assert proc.events[1:3] == ["not json", "[1, 2]"]  # kept as text, JSON or not, when not an object
        assert f"<a line over {LINE_LIMIT} bytes>" in proc.events
        assert await proc.wait_event(lambda e: e == "not json") == "not json"  # past events count
        with pytest.raises(LabError, match="exit code 3"):
            await proc.wait_event("never")
        assert await proc.wait() == proc.returncode == 3
        assert "something went wrong" in proc.stderr_tail()
        assert (tmp_path / "reporter.log").exists()

        sleeper = await lan.spawn("sleep", "30", name="sleeper")
        with pytest.raises(TimeoutError, match="no such event within 0.2 s"):
            await sleeper.wait_event("never", timeout=0.2)
        with pytest.raises(TimeoutError, match="still runs after 0.1 s"):
            await sleeper.wait(0.1)
        assert await sleeper.terminate() == -15


async def test_leaving_a_lan_ends_everything_in_it(tmp_path):
    require_netns()
    # A child that ignores SIGTERM, and a grandchild that left its process group: both must still go.
    script = (
        "import json, signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "stray = subprocess.Popen(['sleep', '60'], start_new_session=True, stdout=subprocess.DEVNULL)\n"
        "print(json.dumps({'event': 'started', 'stray': stray.pid}))\n"
        "time.sleep(60)\n"
    )
    async with Lan(logdir=tmp_path) as lan:
        proc = await lan.spawn(PY, "-c", script, name="stubborn")
        stray = (await proc.wait_event("started"))["stray"]
        netns, holder = lan.netns, lan.pid
        started = time.monotonic()
    assert time.monotonic() - started < GRACE + 2
    assert not any(alive(pid) for pid in (proc.pid, stray, holder))
    assert proc.returncode == -9
    assert not os.path.exists(netns)


async def test_mdns_inside_a_lan_advertises_loopback(tmp_path):
    require_netns()
    async with Lan(logdir=tmp_path, host_address=None) as lan:
        started = time.monotonic()
        advertised = await advertise(lan, "alpha")
        # With nothing but lo, Advertiser falls back to the loopback addresses, IPv6 included.
        assert advertised["addresses"] == ["127.0.0.1", "::1"]
        [found] = await find(lan, "find")
        assert (found["name"], found["host"], found["port"]) == ("alpha", "127.0.0.1", advertised["port"])
        assert found["addresses"] == ["127.0.0.1", "::1"]
        assert await reaches(lan, found["host"], found["port"])
        assert time.monotonic() - started < 15


async def test_a_lan_has_an_address_besides_loopback_and_advertises_it(tmp_path):
    require_netns()
    async with Lan(logdir=tmp_path) as lan:
        advertised = await advertise(lan, "alpha")
        assert advertised["addresses"] == [HOST_ADDRESS]
        [found] = await find(lan, "find")
        assert found["host"] == HOST_ADDRESS and await reaches(lan, HOST_ADDRESS, advertised["port"])


async def test_islands_see_each_other_only_when_joined(tmp_path):
    require_netns()
    async with islands(logdir=tmp_path) as (a, b):
        assert (a.address, b.address) == ISLAND_ADDRESSES
        advertised = await advertise(a, "alpha")
        assert advertised["addresses"] == [a.address]  # its LAN address only: no loopback, no link-local
        port = advertised["port"]

        seen_in_a, seen_in_b = await asyncio.gather(find(a, "find-a"), find(b, "find-b"))
        assert [(s["name"], s["host"]) for s in seen_in_a] == [("alpha", a.address)]
        assert seen_in_b == []
        assert await reaches(a, a.address, port)
        assert not await reaches(b, a.address, port)

        await b.join()
        [found] = await find(b, "find-b-joined")
        assert (found["name"], found["host"], found["addresses"]) == ("alpha", a.address, [a.address])
        assert await reaches(b, a.address, port)

        await a.cut()
        assert not await reaches(b, a.address, port)
        assert await reaches(a, a.address, port)


async def test_join_is_only_for_islands(tmp_path):
    require_netns()
    async with Lan(logdir=tmp_path) as lan:
        with pytest.raises(LabError, match="not one of islands"):
            await lan.join()
