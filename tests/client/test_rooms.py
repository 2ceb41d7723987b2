"""Rooms with real engines, a real server and real aiortc peers: group calls in a full mesh, room chat, direct chat."""

import asyncio
import itertools

from client.core import events as ev
from server import HubConfig, SignalingServer
from tests.support import FAST, Peer

from .engines import Probe, engines, start_engine

TONES = {"ann": 440.0, "ben": 550.0, "cat": 660.0, "dan": 770.0}


def heard(probe: Probe) -> dict[str, float | None]:
    """The tone received from each other participant of the probe's room call, each on its own stream."""
    c = probe.engine.room_call
    return {u: pair.received.dominant_hz() for u, pair in c.pairs.items()} if c is not None else {}


def hears_everyone(probe: Probe, others) -> bool:
    got = heard(probe)
    return set(got) == set(others) and all(
        hz is not None and abs(hz - TONES[u]) <= 5 and probe.engine.room_call.pairs[u].received.audio_frames > 50
        for u, hz in got.items())


async def in_room(probes, room="team", *, video=False):
    for p in probes:
        p.engine.join_room(room)
    for p in probes:
        await p.until(lambda p=p: len(p.engine.rooms[room].members) >= len(probes), 5)
    for p in probes:
        p.engine.join_room_call(room, video=video)


async def test_four_people_each_hear_each_others_tone_on_that_persons_stream_with_a_late_joiner(server):
    async with engines(server.url, *TONES.items()) as probes:
        first, late = probes[:3], probes[3]
        await in_room(first)
        for p in first:
            await p.until(lambda p=p: hears_everyone(p, {q.user for q in first} - {p.user}), 15)
        late.engine.join_room("team")
        late.engine.join_room_call("team")
        for p in probes:
            await p.until(lambda p=p: hears_everyone(p, set(TONES) - {p.user}), 15)
        # One peer connection per pair, offered by exactly one side of it: the late joiner offered to everyone.
        for p, q in itertools.combinations(probes, 2):
            mine, theirs = p.engine.room_call.pairs[q.user], q.engine.room_call.pairs[p.user]
            assert mine.offerer != theirs.offerer and mine.attempts == theirs.attempts == 1
        assert all(pair.offerer for pair in late.engine.room_call.pairs.values())
        assert {server.hub.status(u) for u in TONES} == {"in_call"}
        assert sorted(probes[0].engine.rooms["team"].call) == sorted(TONES)


async def test_three_people_see_both_others_video_at_the_size_for_two_peers(server):
    async with engines(server.url, ("ann", 440), ("ben", 550), ("cat", 660), video=True) as probes:
        await in_room(probes, video=True)
        seen = {}
        for p in probes:
            await p.until(lambda p=p: len(p.engine.room_call.pairs) == 2 and all(
                len(x.received.counters) == 2 for x in p.engine.room_call.pairs.values()), 20)
            seen[p.user] = {u: x.received.counters[-1] for u, x in p.engine.room_call.pairs.items()}
        for p in probes:
            await p.until(lambda p=p: all(x.received.counters[-1] > seen[p.user][u]
                                          for u, x in p.engine.room_call.pairs.items()), 10)
            for x in p.engine.room_call.pairs.values():
                assert (x.received.width, x.received.height) == (480, 360)
        frames = [e for e in probes[0].events if isinstance(e, ev.RoomVideo)]
        assert {e.peer for e in frames} == {"ben", "cat"} and {e.room for e in frames} == {"team"}


async def test_fifth_with_video_joins_with_audio_and_is_told_and_ninth_is_refused_with_the_reason(server):
    fillers = [await Peer.connect(server.url, f"u{i}") for i in range(8)]
    readers = [asyncio.create_task(f.drain()) for f in fillers]
    try:
        for f in fillers[:4]:
            await f.send({"type": "join", "channel": "team"})
            await f.send({"type": "room_call_join", "channel": "team", "media": ["audio", "video"]})
        probe = await start_engine(server.url, "eve", video=True)
        try:
            probe.engine.join_room("team")
            probe.engine.join_room_call("team", video=True)
            change = await probe.until(lambda: next((e for e in probe.events if isinstance(e, ev.RoomCallChanged)
                                                     and e.state == "active"), None))
            assert change.media == ("audio",) and "video is limited to 4 people" in change.notice
            assert probe.engine.room_call.media == ("audio",)
            probe.engine.leave_room_call()
            await probe.until(lambda: "eve" not in probe.engine.rooms["team"].call)
            for f in fillers[4:]:
                await f.send({"type": "join", "channel": "team"})
                await f.send({"type": "room_call_join", "channel": "team", "media": ["audio"]})
            await probe.until(lambda: len(probe.engine.rooms["team"].call) == 8)
            probe.engine.join_room_call("team")
            refused = await probe.until(lambda: next((e for e in probe.events if isinstance(e, ev.RoomCallChanged)
                                                      and e.state == "left" and e.reason != "left"), None))
            assert refused.reason == "the call in room 'team' has 8 people, the most a call can have"
            assert probe.engine.room_call is None and server.hub.status("eve") == "online"
        finally:
            await probe.engine.stop()
    finally:
        for r in readers:
            r.cancel()
        for f in fillers:
            await f.close()


async def test_room_chat_arrives_exactly_once_across_a_signaling_drop_and_newcomers_get_the_history(server):
    async with engines(server.url, ("ann", 440), ("ben", 550)) as (ann, ben):
        await in_room([ann, ben])
        ben.engine.signaling.drop_connection()
        for i in range(20):
            ann.engine.say("team", f"line {i}")
            await asyncio.sleep(0.01)
        await ben.until(lambda: sum(x.kind == "text" for x in ben.engine.rooms["team"].lines) >= 20, 10)
        await asyncio.sleep(0.3)
        texts = [x.text for x in ben.engine.rooms["team"].lines if x.kind == "text"]
        assert texts == [f"line {i}" for i in range(20)]
        assert ben.engine.signaling.connects == 2  # it did drop and resume
        assert all(not x.mine and x.sender == "ann" and x.name == "Ann" for x in ben.engine.rooms["team"].lines
                   if x.kind == "text")
        assert [x.mine for x in ann.engine.rooms["team"].lines if x.kind == "text"] == [True] * 20
        assert ben.engine.rooms["team"].unread == 20
        ben.engine.mark_read("team")
        assert ben.engine.rooms["team"].unread == 0
        cat = await start_engine(server.url, "cat")
        try:
            cat.engine.join_room("team")
            await cat.until(lambda: sum(x.kind == "text" for x in cat.engine.rooms["team"].lines) == 20)
            await ann.until(lambda: any(x.kind == "joined" and x.name == "Cat" for x in ann.engine.rooms["team"].lines))
        finally:
            await cat.engine.stop()
        await ann.until(lambda: any(x.kind == "left" and x.name == "Cat" for x in ann.engine.rooms["team"].lines))


async def test_direct_chat_is_delivered_and_a_line_to_someone_offline_is_marked_not_delivered(server):
    async with engines(server.url, ("ann", 440), ("ben", 550)) as (ann, ben):
        line_id = ann.engine.chat("ben", "are you free?")
        got = await ben.until(lambda: ben.engine.direct.get("ann"))
        assert [(x.text, x.sender, x.name, x.id, x.mine) for x in got] == [("are you free?", "ann", "Ann", line_id,
                                                                            False)]
        gone = ann.engine.chat("zed", "hello?")
        status = await ann.until(lambda: next((e for e in ann.events if isinstance(e, ev.ChatStatus)), None))
        assert (status.peer, status.id, status.delivered) == ("zed", gone, False)
        assert "not delivered" in status.reason
        assert ann.engine.direct["zed"][-1].delivered is False
        assert ann.engine.direct["ben"][-1].delivered is None  # delivered lines carry no marker


async def test_rooms_and_their_call_come_back_after_a_server_restart_with_media_flowing_throughout():
    cfg = dict(FAST, resume_grace=2.0)
    srv = SignalingServer("127.0.0.1", 0, config=HubConfig(**cfg), ping_timeout=0.1)
    await srv.start()
    port = srv.port
    try:
        async with engines(srv.url, ("ann", 440), ("ben", 550), ("cat", 660)) as probes:
            await in_room(probes)
            for p in probes:
                await p.until(lambda p=p: hears_everyone(p, {q.user for q in probes} - {p.user}), 15)
            call_id = probes[0].engine.room_call.call_id
            pairs = {p.user: dict(p.engine.room_call.pairs) for p in probes}
            await srv.stop()

            def frames():
                return [x.received.audio_frames for p in probes for x in p.engine.room_call.pairs.values()]

            counts = [frames()]
            for _ in range(3):  # media flows while there is no server at all
                await asyncio.sleep(0.3)
                counts.append(frames())
            assert all(all(b > a for a, b in zip(x, y, strict=True)) for x, y in itertools.pairwise(counts)), counts
            srv = SignalingServer("127.0.0.1", port, config=HubConfig(**cfg), ping_timeout=0.1)
            await srv.start()
            await probes[0].until(lambda: "team" in srv.hub.room_calls and len(srv.hub.room_calls["team"].media) == 3
                                  and len(srv.hub.channels.get("team", ())) == 3, 10)
            assert srv.hub.room_calls["team"].call_id == call_id
            assert {srv.hub.status(p.user) for p in probes} == {"in_call"}
            await asyncio.sleep(0.5)
            for p in probes:  # the same peer connections carry on
                assert p.engine.room_call.pairs == pairs[p.user]
                assert sorted(p.engine.rooms["team"].call) == ["ann", "ben", "cat"]
    finally:
        await srv.stop()


async def test_leaving_the_room_call_tells_the_others_and_closes_the_pairs(server):
    async with engines(server.url, ("ann", 440), ("ben", 550)) as (ann, ben):
        await in_room([ann, ben])
        await ann.until(lambda: hears_everyone(ann, {"ben"}), 15)
        ben.engine.leave_room_call()
        await ann.until(lambda: not ann.engine.room_call.pairs and "ben" not in ann.engine.rooms["team"].call)
        assert ann.engine.room_call.ended["ben"].end_reason == "left"
        assert ben.engine.room_call is None and ben.engine.room_calls_finished[0].reason == "left"
        await ben.until(lambda: server.hub.status("ben") == "online")
        ann.engine.leave_room("team")
        await ann.until(lambda: ann.engine.room_call is None and "team" not in ann.engine.rooms)
        await ben.until(lambda: ben.engine.rooms["team"].members == ["ben"])
