"""The signaling server over real sockets: sessions, presence, calls, cleanup, resume and keepalive."""

import asyncio

import pytest

from tests.support import MS, Peer, eventually, running_server


async def test_connects_and_confirms_user(server):
    alice = await Peer.connect(server.url, "alice", display_name="Alice")
    w = alice.welcome
    assert w["type"] == "connection_established"
    assert w["user_id"] == "alice"
    assert w["users"] == []
    assert w["resume_token"]
    assert w["server"]["ping_interval"] == pytest.approx(0.1)
    assert w["server"]["resume_grace"] == pytest.approx(0.5)


async def test_users_see_each_other(server):
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob", display_name="Bobby")
    assert bob.welcome["users"] == [{"user_id": "alice", "display_name": "Alice", "status": "online"}]
    msg = await alice.expect("presence")
    assert msg == {"type": "presence", "user_id": "bob", "display_name": "Bobby", "status": "online"}


async def test_two_hundred_simultaneous_connections():
    async with running_server(ping_interval=5, rate=1000, burst=1000, max_unauthenticated_per_ip=200) as srv:
        peers = await asyncio.gather(*(Peer.connect(srv.url, f"u{i}") for i in range(200)))
        assert all(p.welcome["type"] == "connection_established" for p in peers)
        assert [p.welcome["user_id"] for p in peers] == [f"u{i}" for i in range(200)]
        # Whoever connected first hears of all 199 others; everyone's welcome plus presence covers everyone.
        for p in peers:
            seen = {u["user_id"] for u in p.welcome["users"]}
            while len(seen) < 199:
                seen.add((await p.expect("presence", status="online"))["user_id"])
            assert seen == {f"u{i}" for i in range(200)} - {p.user_id}
        await asyncio.gather(*(p.close() for p in peers))


async def test_call_relay_rewrites_from_and_drops_to(server):
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob")
    await alice.send({"type": "call_incoming", "to": "bob", "call_id": "c1", "media": ["audio", "video"]})
    ring = await bob.expect("call_incoming")
    assert ring == {"type": "call_incoming", "call_id": "c1", "from": "alice", "media": ["audio", "video"],
                    "display_name": "Alice"}
    await bob.send({"type": "call_accepted", "to": "alice", "call_id": "c1", "from": "mallory"})
    assert await alice.expect("call_accepted") == {"type": "call_accepted", "call_id": "c1", "from": "bob"}
    await alice.send({"type": "webrtc_offer", "to": "bob", "call_id": "c1", "sdp": "v=0 offer"})
    assert (await bob.expect("webrtc_offer"))["sdp"] == "v=0 offer"
    await bob.send({"type": "webrtc_answer", "to": "alice", "call_id": "c1", "sdp": "v=0 answer"})
    assert (await alice.expect("webrtc_answer"))["from"] == "bob"
    cand = {"candidate": "candidate:1 1 UDP 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await bob.send({"type": "webrtc_ice_candidate", "to": "alice", "call_id": "c1", **cand})
    assert await alice.expect("webrtc_ice_candidate") == {"type": "webrtc_ice_candidate", "call_id": "c1",
                                                          "from": "bob", **cand}
    await alice.send({"type": "call_ended", "to": "bob", "call_id": "c1", "reason": "hangup"})
    assert await bob.expect("call_ended") == {"type": "call_ended", "call_id": "c1", "from": "alice",
                                              "reason": "hangup"}


async def test_presence_in_call_and_back(server):
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob")
    carol = await Peer.connect(server.url, "carol")
    await alice.call(bob)
    assert {(await carol.expect("presence", status="in_call"))["user_id"] for _ in range(2)} == {"alice", "bob"}
    await bob.send({"type": "call_ended", "to": "alice", "call_id": "c1"})
    assert {(await carol.expect("presence", status="online"))["user_id"] for _ in range(2)} == {"alice", "bob"}
    assert server.hub.calls == {}


async def test_call_to_offline_user(server):
    alice = await Peer.connect(server.url, "alice")
    await alice.send({"type": "call_incoming", "to": "nobody", "call_id": "c1", "media": ["audio"]})
    err = await alice.expect("error")
    assert err["code"] == "user_offline" and err["ref"] == "c1" and "nobody" in err["message"]


async def test_busy_callee_rejects_with_busy(server):
    alice, bob, carol = [await Peer.connect(server.url, u) for u in ("alice", "bob", "carol")]
    await alice.call(bob)
    await carol.send({"type": "call_incoming", "to": "bob", "call_id": "c2", "media": ["audio"]})
    assert await carol.expect("call_rejected") == {"type": "call_rejected", "call_id": "c2", "from": "bob",
                                                   "reason": "busy"}
    assert await bob.silent("call_incoming")


async def test_ring_timeout_ends_call_for_both():
    async with running_server(ring_timeout=300 * MS) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        await alice.send({"type": "call_incoming", "to": "bob", "call_id": "c1", "media": ["audio"]})
        await bob.expect("call_incoming")
        a = await alice.expect("call_ended", timeout=2)
        b = await bob.expect("call_ended", timeout=2)
        assert a == {"type": "call_ended", "call_id": "c1", "from": "bob", "reason": "no_answer"}
        assert b == {"type": "call_ended", "call_id": "c1", "from": "alice", "reason": "no_answer"}
        assert srv.hub.calls == {}


async def test_relay_outside_the_call_is_not_in_call(server):
    alice, bob, eve = [await Peer.connect(server.url, u) for u in ("alice", "bob", "eve")]
    await alice.call(bob)
    await eve.send({"type": "webrtc_offer", "to": "bob", "call_id": "c1", "sdp": "x"})
    err = await eve.expect("error")
    assert err["code"] == "not_in_call" and err["ref"] == "c1"
    await eve.send({"type": "call_ended", "to": "alice", "call_id": "nope"})
    assert (await eve.expect("error"))["code"] == "not_in_call"
    assert await bob.silent("webrtc_offer")
    assert server.hub.status("bob") == "in_call"


@pytest.mark.parametrize("how", ["clean_close", "tcp_cut", "stops_answering_pings"])
async def test_cleanup_when_a_user_disappears(how):
    """A ringing call and an active call both end with peer_disconnected, and the user ends offline."""
    async with running_server(resume_grace=300 * MS, ring_timeout=30) as srv:
        alice, bob, carol, dave = [await Peer.connect(srv.url, u) for u in ("alice", "bob", "carol", "dave")]
        await alice.call(bob, "active")
        await carol.send({"type": "call_incoming", "to": "dave", "call_id": "ringing", "media": ["audio"]})
        await dave.expect("call_incoming")
        # bob leaves the active call; dave leaves the ringing one.
        for victim in (bob, dave):
            if how == "clean_close":
                await victim.close()
            elif how == "tcp_cut":
                victim.cut()
            else:
                victim.freeze()
        await alice.expect("presence", user_id="bob", status="reconnecting", timeout=2)
        ended = await alice.expect("call_ended", timeout=3)
        assert ended == {"type": "call_ended", "call_id": "active", "from": "bob", "reason": "peer_disconnected"}
        ended = await carol.expect("call_ended", timeout=3)
        assert ended == {"type": "call_ended", "call_id": "ringing", "from": "dave", "reason": "peer_disconnected"}
        assert (await carol.expect("presence", user_id="dave", status="offline"))["status"] == "offline"
        assert srv.hub.status("bob") == srv.hub.status("dave") == "offline"
        assert srv.hub.status("alice") == "online"
        assert srv.hub.calls == {} and set(srv.hub.sessions) == {"alice", "carol"}
        srv.hub.check_invariants()


async def test_half_open_connection_found_within_ping_interval_plus_timeout():
    async with running_server(ping_interval=200 * MS, ping_timeout=200 * MS, resume_grace=10) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        loop = asyncio.get_running_loop()
        start = loop.time()
        bob.freeze()
        await alice.expect("presence", user_id="bob", status="reconnecting", timeout=2)
        assert loop.time() - start <= 0.4 + 0.15  # ping interval + ping timeout, plus scheduling slack


async def test_resume_within_grace_delivers_queue_in_order_and_keeps_call():
    async with running_server(resume_grace=2) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        token = bob.welcome["resume_token"]
        bob.cut()
        await alice.expect("presence", user_id="bob", status="reconnecting")
        for i in range(5):
            await alice.send({"type": "webrtc_ice_candidate", "to": "bob", "call_id": "c1", "candidate": f"cand{i}",
                              "sdpMid": "0", "sdpMLineIndex": 0})
        await asyncio.sleep(50 * MS)  # let the server queue them
        bob = await Peer.connect(srv.url, "bob", resume_token=token)
        assert bob.welcome["resumed"] is True
        assert bob.welcome["resume_token"] == token
        got = [await bob.expect("webrtc_ice_candidate") for _ in range(5)]
        assert [m["candidate"] for m in got] == [f"cand{i}" for i in range(5)]
        assert await bob.silent("webrtc_ice_candidate")  # nothing duplicated
        await alice.expect("presence", user_id="bob", status="in_call")
        assert srv.hub.status("bob") == "in_call" and "c1" in srv.hub.calls
        await alice.send({"type": "call_ended", "to": "bob", "call_id": "c1"})
        assert (await bob.expect("call_ended"))["from"] == "alice"


async def test_resume_after_grace_is_a_fresh_login():
    async with running_server(resume_grace=200 * MS) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        token = bob.welcome["resume_token"]
        bob.cut()
        await alice.expect("call_ended", timeout=2)
        bob = await Peer.connect(srv.url, "bob", resume_token=token)
        assert bob.welcome["type"] == "connection_established"
        assert bob.welcome["resumed"] is False and bob.welcome["resume_token"] != token
        assert srv.hub.status("bob") == "online"


async def test_resume_replaces_a_connection_the_server_still_holds(server):
    bob = await Peer.connect(server.url, "bob")
    token = bob.welcome["resume_token"]
    bob2 = await Peer.connect(server.url, "bob", resume_token=token)
    assert bob2.welcome["resumed"] is True
    assert (await bob.closed())[0] == 4000
    assert server.hub.status("bob") == "online"


async def test_second_hello_for_online_user_without_token_is_name_taken(server):
    await Peer.connect(server.url, "bob")
    imposter = await Peer.connect(server.url, "bob")
    assert imposter.welcome["type"] == "error" and imposter.welcome["code"] == "name_taken"
    # the connection stays usable: it may pick another name
    await imposter.send({"type": "hello", "protocol": 1, "user_id": "bob2", "display_name": "Bob"})
    assert (await imposter.expect("connection_established"))["user_id"] == "bob2"


async def test_fresh_login_during_grace_replaces_stale_session():
    async with running_server(resume_grace=30) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        bob.cut()
        await alice.expect("presence", user_id="bob", status="reconnecting")
        bob = await Peer.connect(srv.url, "bob")  # restarted app: no resume token
        assert bob.welcome["resumed"] is False
        assert (await alice.expect("call_ended"))["reason"] == "peer_disconnected"


async def test_token_required():
    async with running_server(token="s3cret") as srv:
        bad = await Peer.connect(srv.url, "alice", token="wrong")
        assert bad.welcome["code"] == "auth_failed"
        assert (await bad.closed())[0] == 1008
        await asyncio.sleep(150 * MS)  # failed logins from one address are throttled: 100 ms after the first
        missing = await Peer.connect(srv.url, "alice")
        assert missing.welcome["code"] == "auth_failed" and "needs a token" in missing.welcome["message"]
        await asyncio.sleep(250 * MS)  # ... 200 ms after the second
        good = await Peer.connect(srv.url, "alice", token="s3cret")
        assert good.welcome["type"] == "connection_established"


async def test_glare_two_ringing_calls_between_the_same_pair(server):
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob")
    await alice.send({"type": "call_incoming", "to": "bob", "call_id": "a-1", "media": ["audio"]})
    await bob.send({"type": "call_incoming", "to": "alice", "call_id": "b-1", "media": ["audio"]})
    assert (await bob.expect("call_incoming"))["call_id"] == "a-1"
    assert (await alice.expect("call_incoming"))["call_id"] == "b-1"
    # both keep the call whose id sorts first; the loser is cancelled by its caller
    await bob.send({"type": "call_ended", "to": "alice", "call_id": "b-1", "reason": "glare"})
    await bob.send({"type": "call_accepted", "to": "alice", "call_id": "a-1"})
    assert (await alice.expect("call_ended"))["reason"] == "glare"
    assert (await alice.expect("call_accepted"))["call_id"] == "a-1"
    assert list(server.hub.calls) == ["a-1"]


async def test_channels(server):
    alice = await Peer.connect(server.url, "alice")
    bob = await Peer.connect(server.url, "bob")
    await alice.send({"type": "join", "channel": "team"})
    joined = await alice.expect("joined")
    assert [m["user_id"] for m in joined["members"]] == ["alice"]
    await bob.send({"type": "join", "channel": "team"})
    assert [m["user_id"] for m in (await bob.expect("joined"))["members"]] == ["alice", "bob"]
    assert await alice.expect("channel_member") == {"type": "channel_member", "channel": "team",
                                                    "user_id": "bob", "event": "joined", "display_name": "Bob"}
    await bob.send({"type": "channel_message", "channel": "team", "text": "hi all", "from": "mallory"})
    for peer in (alice, bob):
        msg = await peer.expect("channel_message")
        assert msg["from"] == "bob" and msg["text"] == "hi all" and isinstance(msg["ts"], float)
    await bob.send({"type": "leave", "channel": "team"})
    assert await bob.expect("left") == {"type": "left", "channel": "team"}
    assert (await alice.expect("channel_member"))["event"] == "left"


async def test_bye_goes_offline_at_once():
    async with running_server(resume_grace=30) as srv:
        alice = await Peer.connect(srv.url, "alice")
        bob = await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        await bob.send({"type": "bye"})
        assert (await alice.expect("call_ended"))["reason"] == "peer_disconnected"
        await alice.expect("presence", user_id="bob", status="offline")
        assert (await bob.closed())[0] == 1000


async def test_server_stop_closes_with_going_away():
    async with running_server() as srv:
        alice = await Peer.connect(srv.url, "alice")
        stopping = asyncio.create_task(srv.stop())
        assert (await alice.closed())[0] == 1001
        await stopping


async def test_health_endpoint(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.read(400), 2)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert f"\r\nCallbox-Server-Id: {server.hub.config.server_id}\r\n".encode() in head


async def test_a_peer_that_stops_reading_is_dropped_not_buffered_without_end():
    """Messages pile up for a frozen peer: past the write limit it is cut, and it may resume later."""
    async with running_server(rate=100_000, burst=100_000, ping_interval=0.5, ping_timeout=2,
                              resume_grace=10) as srv:
        alice, bob = await Peer.connect(srv.url, "alice"), await Peer.connect(srv.url, "bob")
        await alice.call(bob)
        bob.freeze()
        sdp = "v=0 " + "x" * 60_000  # only bob receives these; alice hears nothing back
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(200):  # about 12 MB for bob, more than the socket buffers and the write limit
            await alice.send({"type": "webrtc_offer", "to": "bob", "call_id": "c1", "sdp": sdp})
            await asyncio.sleep(2 * MS)  # let the server handle it: what comes after the drop is kept for
            if srv.hub.status("bob") == "reconnecting":  # bob's resume, up to 1 MiB (more ends his session)
                break
        await eventually(lambda: srv.hub.status("bob") == "reconnecting", 5)
        assert loop.time() - start < 8
        assert srv.hub.status("alice") == "in_call"  # the sender is untouched
        stopping = loop.time()
        await srv.stop()
        assert loop.time() - stopping < 5  # shutdown does not hang on the frozen peer
