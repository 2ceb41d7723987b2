"""LAN discovery on loopback only: servers that Advertiser announces are found, with their TXT data, by find_servers.

Every zeroconf socket here is bound to 127.0.0.1 (interfaces=["127.0.0.1"]), so every mDNS packet is sent on
`lo` with a loopback source address, which Linux never routes out of another interface. That needs IPv4
multicast over loopback (Linux delivers it with no setup: neither lo's MULTICAST flag nor a route is needed,
since 224.0.0.251 is link-local multicast and zeroconf names the interface) and UDP port 5353 open to share.
Without them these tests skip, or fail under CALLBOX_REQUIRE_MULTICAST=1 (CI), saying what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from server.discovery import SERVICE_TYPE, Advertiser, FoundServer, find_servers
from shared import __version__
from shared.protocol import PROTOCOL_VERSION
from tests.components import require_multicast
from tests.support import Peer, running_server

LOOPBACK = ["127.0.0.1"]
# A browse that starts right after an announcement gets its answer about 1 s late: a responder may not
# multicast a record again within a second (RFC 6762 section 14). 3 s leaves room on a loaded machine.
FIND_S = 3.0
BOUND_S = 20.0  # upper bound on any one start, stop or browse here


def unique(label: str) -> str:
    """An instance name no other run (or app on this machine) uses, so results can be told apart."""
    return f"{label} {uuid.uuid4().hex[:8]}"


async def find(**kw) -> list[FoundServer]:
    async with asyncio.timeout(BOUND_S):
        return await find_servers(FIND_S, interfaces=LOOPBACK, **kw)


async def advertise(port: int, name: str, **kw) -> Advertiser:
    adv = Advertiser()
    async with asyncio.timeout(BOUND_S):
        await adv.start(port, name=name, version=__version__, interfaces=LOOPBACK, **kw)
    return adv


async def stop(*advertisers: Advertiser) -> None:
    async with asyncio.timeout(BOUND_S):
        await asyncio.gather(*(a.stop() for a in advertisers))


async def test_advertised_servers_are_found_with_port_url_and_txt():
    require_multicast()
    plain_name, tls_name = unique("Alice's Callbox"), unique("Bob's Callbox")
    async with running_server(token="s3cret") as plain, running_server() as other:
        a, b = await asyncio.gather(
            advertise(plain.port, plain_name, token_required=True),
            advertise(other.port, tls_name, tls=True),
        )
        try:
            assert (a.name, a.addresses) == (plain_name, ["127.0.0.1"])
            found = {s.name: s for s in await find()}
        finally:
            await stop(a, b)

        assert plain_name in found and tls_name in found, f"found only {sorted(found)}"
        s = found[plain_name]
        assert (s.host, s.port, s.url) == ("127.0.0.1", plain.port, f"ws://127.0.0.1:{plain.port}")
        assert s.addresses == ("127.0.0.1",)
        assert s.properties == {"version": __version__, "proto": str(PROTOCOL_VERSION), "tls": "0", "token": "1"}
        assert (s.version, s.tls, s.token_required) == (__version__, False, True)

        t = found[tls_name]
        assert (t.port, t.url) == (other.port, f"wss://127.0.0.1:{other.port}")
        assert (t.tls, t.token_required) == (True, False)

        # The URL it found reaches the real server.
        peer = await Peer.connect(s.url, "alice", token="s3cret")
        try:
            assert peer.welcome["type"] == "connection_established"
        finally:
            await peer.close()


async def test_after_stop_a_fresh_browse_does_not_find_it():
    require_multicast()
    name = unique("Short-lived")
    async with running_server() as srv:
        adv = await advertise(srv.port, name)
        try:
            assert name in [s.name for s in await find()]
        finally:
            await stop(adv)
        assert not adv.running and adv.name is None
        assert name not in [s.name for s in await find()]
        await stop(adv)  # stopping again is a no-op


async def test_nothing_advertised_finds_nothing():
    require_multicast()
    found = await find()
    assert found == [], f"nothing of this test is advertised, yet found {found} (a Callbox running here?)"


async def test_find_servers_returns_empty_and_logs_when_sockets_fail(monkeypatch, caplog):
    """No network, mDNS port taken, multicast refused: the browse logs why and finds nothing, never raises."""
    zc_asyncio = pytest.importorskip("zeroconf.asyncio")

    def no_sockets(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(zc_asyncio, "AsyncZeroconf", no_sockets)
    with caplog.at_level(logging.WARNING, logger="callbox.discovery"):
        assert await find_servers(0.2, interfaces=LOOPBACK) == []
    assert "cannot open mDNS sockets" in caplog.text and "No such device" in caplog.text


async def test_find_servers_on_an_address_this_machine_lacks_returns_empty():
    # 203.0.113.0/24 is TEST-NET-3: no interface here has it, so zeroconf cannot join the group and sends nothing.
    pytest.importorskip("zeroconf")
    async with asyncio.timeout(BOUND_S):
        assert await find_servers(0.2, interfaces=["203.0.113.77"]) == []


def test_service_type():
    assert SERVICE_TYPE == "_callbox._tcp.local."
