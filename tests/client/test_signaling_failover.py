"""SignalingClient with several addresses, against real servers on loopback: the order, moving on, wrapping around."""

from __future__ import annotations

import contextlib
import socket

from client.core.signaling import ConnState, SignalingClient, addresses
from shared import protocol as p
from tests.client.test_signaling import QUICK, Probe
from tests.support import eventually, running_server

ONLINE, RECONNECTING, OFFLINE = ConnState.ONLINE, ConnState.RECONNECTING, ConnState.OFFLINE
WAIT = 5.0  # seconds: generous, the machine is shared


@contextlib.contextmanager
def dead_address():
    """A ws:// address on loopback where nothing listens (bound, never listening: connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}"


def make_client(urls, probe: Probe) -> SignalingClient:
    return SignalingClient(urls, "alice", "Alice", on_message=probe.on_message, on_state=probe.on_state, **QUICK)


def test_addresses_keep_their_order_and_drop_the_empty_items_stray_commas_leave():
    assert addresses(",ws://a:1,, ws://b:2 ,") == ["ws://a:1", "ws://b:2"]
    assert addresses(["ws://a:1", " ", "ws://b:2"]) == ["ws://a:1", "ws://b:2"]
    assert addresses("ws://a:1\nws://b:2\n") == ["ws://a:1", "ws://b:2"]
    assert SignalingClient("ws://a:1,,ws://b:2,", "alice", "Alice").urls == ["ws://a:1", "ws://b:2"]


async def test_with_the_first_address_dead_it_gets_online_on_the_second():
    with dead_address() as dead:
        async with running_server() as srv:
            probe = Probe()
            client = make_client(f"{dead},{srv.url}", probe)
            try:
                client.start()
                await eventually(lambda: client.state is ONLINE, WAIT)
                assert client.url == srv.url and client.urls == [dead, srv.url]
                assert srv.hub.status("alice") == "online" and client.connects == 1
                assert [why for s, why, _ in probe.states if s is RECONNECTING] == [
                    "the server refused the connection; is it running on that port?"]
            finally:
                await client.stop()


async def test_when_the_server_in_use_stops_it_moves_to_the_next_and_wraps_around_back():
    async with running_server(resume_grace=5) as a, running_server(resume_grace=5) as b:
        probe = Probe()
        client = make_client([a.url, b.url], probe)
        try:
            client.start()
            await eventually(lambda: client.state is ONLINE, WAIT)
            assert client.url == a.url and a.hub.status("alice") == "online"
            token = client.resume_token

            await a.stop()  # the one in use: the next attempt goes to b, with the same resume token
            await eventually(lambda: client.state is ONLINE and client.connects == 2, WAIT)
            assert client.url == b.url and b.hub.status("alice") == "online"
            # Two independent servers: b does not know the session a gave, so it is a fresh login with a new token.
            first, second = probe.of(p.ConnectionEstablished)
            assert (first.resumed, second.resumed) == (False, False)
            assert second.resume_token != token == first.resume_token

            # Lost on b: the next attempt goes to a (stopped, refused), then around to b, which resumes.
            refused = len(probe.states)
            client.drop_connection()
            await eventually(lambda: client.state is ONLINE and client.connects == 3, WAIT)
            assert client.url == b.url
            assert "refused" in " ".join(why for s, why, _ in probe.states[refused:] if s is RECONNECTING)
            assert probe.of(p.ConnectionEstablished)[-1].resumed is True
            assert probe.states[-1][:2] == (ONLINE, "resumed")
        finally:
            await client.stop()


async def test_a_list_with_a_bad_address_goes_offline_naming_it_and_tries_none():
    async with running_server() as srv:
        probe = Probe()
        client = make_client(f"{srv.url},http://b:8765", probe)
        try:
            client.start()
            await eventually(lambda: probe.kinds()[-1:] == [OFFLINE], WAIT)  # OFFLINE is also where it starts
            assert client.reason == "'http://b:8765' is not a ws:// or wss:// address"
            assert client.connects == 0 and srv.hub.status("alice") == "offline"
        finally:
            await client.stop()
