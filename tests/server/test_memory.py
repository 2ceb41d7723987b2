"""Bounded memory per session: replay buffers in bytes, and a stalled reader that loses channel messages only."""

import asyncio
import json
import socket

from websockets.asyncio.client import connect

from tests.support import MS, Peer, eventually, running_server


async def test_replay_buffer_is_bounded_in_bytes_and_past_it_the_session_ends():
    async with running_server(resume_grace=30, replay_bytes=256 * 1024) as srv:
        alice, bob = await Peer.connect(srv.url, "alice"), await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        offer = {"type": "webrtc_offer", "to": "bob", "call_id": "c1", "sdp": "v=0 " + "x" * 61_000}
        for _ in range(20):  # 1.2 MB while bob reads: the buffer keeps only the newest
            await alice.send(offer)
            await bob.expect("webrtc_offer")
        assert sum(len(t) for _, t in srv.hub.sessions["bob"].replay.entries) <= 256 * 1024
        bob.cut()
        await alice.expect("presence", user_id="bob", status="reconnecting")
        for _ in range(6):  # 366 KB while bob is away: more than his buffer, so he cannot resume
            await alice.send(offer)
        ended = await alice.expect("call_ended", timeout=3)
        assert ended["reason"] == "peer_disconnected"
        await eventually(lambda: "bob" not in srv.hub.sessions)
        assert srv.hub.replay.used <= 256 * 1024 + 70_000
        srv.hub.check_invariants()


async def _slow_reader(url: str, user_id: str) -> Peer:
    """A client on a socket with a small receive buffer, so what it leaves unread piles up at the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    host, port = url.removeprefix("ws://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    peer = Peer(await connect(url, sock=sock, ping_interval=None, max_size=None), user_id)
    await peer.hello()
    return peer


async def test_a_stalled_reader_in_a_flooded_channel_keeps_its_session_and_call_and_gets_a_gap_marker():
    async with running_server(ping_interval=5, ping_timeout=5, resume_grace=5, max_unauthenticated_per_ip=64) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await _slow_reader(srv.url, "bob")
        await alice.call(bob)
        senders = [await Peer.connect(srv.url, f"s{i}") for i in range(10)]
        for p in [bob, *senders]:
            await p.send({"type": "join", "channel": "flood"})
            await p.expect("joined")
        received = 2  # what bob counts for a resume, every frame after the welcome but presence: so far
        # call_incoming and joined, taken by expect(); the rest is read here
        for m in await _read_all(bob, 300 * MS):
            received += m["type"] != "presence"

        async def drain(p):  # the senders read what they get
            while True:
                await p.ws.recv()

        async def flood(p):
            text = "f" * 4000
            loop = asyncio.get_running_loop()
            end = loop.time() + 3
            while loop.time() < end:
                await p.send({"type": "channel_message", "channel": "flood", "text": text})
                await asyncio.sleep(10 * MS)

        drains = [asyncio.create_task(drain(p)) for p in senders]
        bob.ws.transport.pause_reading()
        await asyncio.gather(*(flood(p) for p in senders))
        await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": "during"})
        assert srv.hub.status("bob") == "in_call"
        assert srv.hub.conns[srv.hub.sessions["bob"].conn].congested  # the flood did pile up for him
        bob.ws.transport.resume_reading()
        got = await _read_all(bob, 1.0)
        received += sum(m["type"] != "presence" for m in got)
        gaps = [m for m in got if m["type"] == "channel_gap"]
        assert gaps and gaps[0]["channel"] == "flood" and gaps[0]["missed"] > 0
        assert [m["candidate"] for m in got if m["type"] == "webrtc_ice_candidate"] == ["during"]
        assert srv.hub.status("bob") == "in_call" and "c1" in srv.hub.calls
        for t in drains:
            t.cancel()
        # Bob's session can still resume, with nothing missing.
        token = bob.welcome["resume_token"]
        bob.cut()
        await alice.expect("presence", user_id="bob", status="reconnecting", timeout=3)
        bob = await Peer.connect(srv.url, "bob", resume_token=token, received=received)
        assert bob.welcome["resumed"] is True
        await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": "after"})
        assert (await bob.expect("webrtc_ice_candidate"))["candidate"] == "after"
        assert srv.hub.status("bob") == "in_call"
        srv.hub.check_invariants()


async def _read_all(peer: Peer, quiet: float) -> list[dict]:
    """Everything that arrives until nothing has for `quiet` seconds."""
    got = list(peer.backlog)
    peer.backlog.clear()
    while True:
        try:
            got.append(json.loads(await asyncio.wait_for(peer.ws.recv(), quiet)))
        except TimeoutError:
            return got
