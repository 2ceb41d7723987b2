"""Calls end to end: a real server on port 0, real aiortc peers, synthetic tones and test patterns."""

import asyncio
import itertools
import random

import numpy as np

from server import HubConfig, SignalingServer
from shared.calls import State
from tests.client.engines import connected_call, engines
from tests.support import FAST, running_server


async def test_tones_cross_both_ways(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = alice.engine.call("bob")
        await bob.until(lambda: bob.incoming())
        assert bob.incoming()[0].display_name == "Alice" and bob.incoming()[0].peer == "alice"
        bob.engine.accept(call_id)
        await alice.state(call_id, "active")
        await bob.state(call_id, "active")
        await asyncio.sleep(1.2)  # a second of audio for the analysis window
        heard_by_alice = alice.session(call_id).received.dominant_hz()
        heard_by_bob = bob.session(call_id).received.dominant_hz()
        assert abs(heard_by_alice - 660) <= 5, heard_by_alice
        assert abs(heard_by_bob - 440) <= 5, heard_by_bob
        assert server.hub.status("alice") == server.hub.status("bob") == "in_call"
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")
        assert bob.ended(call_id).reason == "hangup"
        assert alice.states(call_id) == ["ringing", "connecting", "active", "ended"]
        assert bob.states(call_id) == ["ringing", "connecting", "active", "ended"]
        await alice.until(lambda: alice.engine.media.open_devices == 0)


async def test_video_counter_arrives_and_increases(server):
    async with engines(server.url, ("alice", 440), ("bob", 660), video=True) as (alice, bob):
        call_id = alice.engine.call("bob", video=True)
        await bob.until(lambda: bob.incoming())
        bob.engine.accept(call_id, video=True)
        for p in (alice, bob):
            await p.until(lambda p=p: p.session(call_id).received.video_frames >= 30)
        for p in (alice, bob):
            r = p.session(call_id).received
            assert (r.width, r.height) == (640, 480)
            first, last = r.counters
            assert last > first and last - first >= 20
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")


async def test_reject(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = alice.engine.call("bob")
        await bob.until(lambda: bob.incoming())
        bob.engine.reject(call_id)
        await alice.state(call_id, "ended")
        assert alice.ended(call_id).reason == "rejected" and bob.ended(call_id).reason == "rejected"
        assert alice.states(call_id) == ["ringing", "ended"]


async def test_cancel_before_answer(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = alice.engine.call("bob")
        await bob.until(lambda: bob.incoming())
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")
        assert alice.ended(call_id).reason == bob.ended(call_id).reason == "cancelled"
        assert bob.engine.accept(call_id) is False  # too late: nothing is sent, nothing changes
        assert bob.states(call_id) == ["ringing", "ended"]


async def test_busy(server):
    async with engines(server.url, ("alice", 440), ("bob", 660), ("carol", 880)) as (alice, bob, carol):
        first = alice.engine.call("bob")
        await bob.until(lambda: bob.incoming())
        bob.engine.accept(first)
        await alice.state(first, "active")
        second = carol.engine.call("bob")
        await carol.state(second, "ended")
        assert carol.ended(second).reason == "busy"
        assert not [e for e in bob.incoming() if e.call_id == second]
        assert alice.session(first).call.state is State.ACTIVE


async def test_no_answer():
    async with running_server(ring_timeout=0.5) as srv:
        async with engines(srv.url, ("alice", 440), ("bob", 660)) as (alice, bob):
            call_id = alice.engine.call("bob")
            await alice.state(call_id, "ended", timeout=5)
            await bob.state(call_id, "ended", timeout=5)
            assert alice.ended(call_id).reason == bob.ended(call_id).reason == "no_answer"


async def test_offline_callee(server):
    async with engines(server.url, ("alice", 440)) as (alice,):
        call_id = alice.engine.call("nobody")
        await alice.state(call_id, "ended")
        assert alice.ended(call_id).reason == "offline"


async def test_glare_leaves_exactly_one_call(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        a = alice.engine.call("bob")
        b = bob.engine.call("alice")
        winner = min(a, b)
        await alice.state(winner, "active")
        await bob.state(winner, "active")
        loser = max(a, b)
        await asyncio.sleep(0.3)
        for p in (alice, bob):
            live = [s.call.call_id for s in p.engine.sessions.values() if s.call.live]
            assert live == [winner]
        loser_side = alice if loser == a else bob
        assert loser_side.ended(loser).reason == "glare"
        assert list(server.hub.calls) == [winner]


async def test_signaling_drop_does_not_end_the_call(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = await connected_call(alice, bob)
        before = alice.session(call_id).received.audio_frames
        bob.engine.signaling.drop_connection()  # TCP cut, no close frame
        await bob.until(lambda: bob.engine.connection.value == "reconnecting", 2)
        await bob.until(lambda: bob.engine.connection.value == "online", 5)
        assert bob.engine.signaling.connects == 2
        await asyncio.sleep(0.5)
        assert alice.session(call_id).received.audio_frames > before + 20
        assert alice.session(call_id).call.state is State.ACTIVE
        assert server.hub.status("bob") == "in_call"
        bob.engine.hangup(call_id)
        await alice.state(call_id, "ended")


async def test_server_restart_mid_call_keeps_media_and_restores_presence():
    cfg = dict(FAST, resume_grace=2.0)
    srv = SignalingServer("127.0.0.1", 0, config=HubConfig(**cfg), ping_timeout=0.1)
    await srv.start()
    port = srv.port
    try:
        async with engines(srv.url, ("alice", 440), ("bob", 660)) as (alice, bob):
            call_id = await connected_call(alice, bob)
            await srv.stop()
            counts = [(alice.session(call_id).received.audio_frames, bob.session(call_id).received.audio_frames)]
            await alice.until(lambda: alice.engine.connection.value == "reconnecting", 3)
            for _ in range(3):  # media keeps flowing while there is no server at all
                await asyncio.sleep(0.3)
                counts.append((alice.session(call_id).received.audio_frames,
                               bob.session(call_id).received.audio_frames))
            assert all(b[0] > a[0] and b[1] > a[1] for a, b in itertools.pairwise(counts)), counts
            srv = SignalingServer("127.0.0.1", port, config=HubConfig(**cfg), ping_timeout=0.1)
            await srv.start()
            for p in (alice, bob):
                await p.until(lambda p=p: p.engine.connection.value == "online", 5)
            await alice.until(lambda: srv.hub.status("alice") == srv.hub.status("bob") == "in_call", 5)
            assert alice.session(call_id).call.state is State.ACTIVE
            assert bob.session(call_id).call.state is State.ACTIVE
            alice.engine.hangup(call_id)
            await bob.state(call_id, "ended")
            assert bob.ended(call_id).reason == "hangup"
    finally:
        await srv.stop()


async def test_broken_media_is_repaired_with_a_new_peer_connection(server):
    async with engines(server.url, ("alice", 440), ("bob", 660), media_timeout=0.5, repair_after=1.0) as (alice, bob):
        call_id = await connected_call(alice, bob)
        # Break the network path under both peer connections: stop the ICE transports.
        for p in (alice, bob):
            for t in p.session(call_id).pc.pc.getTransceivers():
                await t.receiver.transport.transport.stop()
        await alice.state(call_id, "reconnecting", timeout=5)
        await alice.until(lambda: alice.states(call_id).count("active") == 2, 15)
        assert alice.session(call_id).attempts == 2
        await asyncio.sleep(1.2)
        assert abs(alice.session(call_id).received.dominant_hz() - 660) <= 5
        alice.engine.hangup(call_id)
        await bob.state(call_id, "ended")


async def test_unrepairable_call_ends_with_ice_failed(server):
    async with engines(server.url, ("alice", 440), ("bob", 660), media_timeout=0.3, repair_after=0.6) as (alice, bob):
        call_id = alice.engine.call("bob")
        await bob.until(lambda: bob.incoming())

        async def ignore_offer(msg):  # bob never answers: no peer connection can come up
            return None

        bob.session(call_id).pair.on_offer = ignore_offer
        bob.engine.accept(call_id)
        await alice.state(call_id, "ended", timeout=15)
        assert alice.ended(call_id).reason == "ice_failed"
        assert alice.session(call_id).attempts == 3
        await bob.state(call_id, "ended", timeout=5)
        assert bob.ended(call_id).reason == "ice_failed"


async def test_mute_sends_silence_in_the_same_track(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):
        call_id = await connected_call(alice, bob)
        alice.engine.set_muted(True)
        await asyncio.sleep(1.2)
        r = bob.session(call_id).received
        level = float(np.sqrt(np.mean(np.concatenate(list(r.recent)).astype(float) ** 2)))
        assert level < 50, level  # int16 RMS: silence, while frames still arrive
        frames = r.audio_frames
        await asyncio.sleep(0.3)
        assert r.audio_frames > frames + 10
        alice.engine.set_muted(False)
        await asyncio.sleep(1.2)
        assert abs(r.dominant_hz() - 440) <= 5


async def test_echo_test_sends_back_what_it_hears(server):
    async with engines(server.url, ("alice", 523), video=True) as (alice,):
        call_id = await alice.engine.echo_test(video=True)
        await alice.state(call_id, "active", timeout=10)
        await asyncio.sleep(1.2)
        r = alice.session(call_id).received
        assert abs(r.dominant_hz() - 523) <= 5  # her own tone, back from the echo
        await alice.until(lambda: r.video_frames > 20 and r.counters[-1] > r.counters[0], 5)
        assert server.hub.calls == {}  # the server never saw it
        alice.engine.hangup(call_id)
        await alice.state(call_id, "ended")
        await alice.until(lambda: alice.engine.media.open_devices == 0, 5)


async def test_call_survives_a_signaling_path_that_delays_stalls_and_cuts():
    """Alice's signaling goes through a faulty proxy; she always comes back and no call the server had is lost."""
    from tests.client.engines import start_engine
    from tests.faultproxy import FaultProxy

    faults = random.Random(7)
    async with running_server(resume_grace=5, ping_interval=1, ping_timeout=1) as srv, \
            FaultProxy(srv.port) as proxy:
        alice = await start_engine(proxy.url, "alice", tone=440)
        bob = await start_engine(srv.url, "bob", tone=660)
        try:
            await alice.until(lambda: "bob" in alice.engine.signaling.users, 5)
            call_id = await connected_call(alice, bob)
            for kind in ["delay", "stall", "cut", "stall", "cut", "delay", "cut"]:
                if kind == "delay":
                    proxy.delay = faults.uniform(0.02, 0.1)
                    await asyncio.sleep(0.3)
                    proxy.delay = 0
                elif kind == "stall":
                    proxy.stall()
                    await asyncio.sleep(faults.uniform(0.1, 0.8))
                    proxy.unstall()
                else:
                    proxy.cut()
                await alice.until(lambda: alice.engine.connection.value == "online", 5)
                assert srv.hub.status("alice") != "offline" and call_id in srv.hub.calls
            frames = bob.session(call_id).received.audio_frames
            await asyncio.sleep(0.5)
            assert bob.session(call_id).received.audio_frames > frames + 10
            assert alice.session(call_id).call.state is State.ACTIVE
            assert alice.engine.signaling.connects >= 4
            bob.engine.hangup(call_id)
            await alice.state(call_id, "ended")
            assert alice.ended(call_id).reason == "hangup"
        finally:
            await alice.engine.stop()
            await bob.engine.stop()
