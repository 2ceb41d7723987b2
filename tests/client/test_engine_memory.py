"""What the engine keeps of calls that are over: a bounded memory of glare losers, and in app mode only the last
few finished calls, none of them holding decoded audio."""

import logging

from client.core.engine import GLARE_LOSERS_KEPT, RECENT_FINISHED, Engine, EngineConfig
from client.core.media import LocalMedia
from shared import protocol as p
from tests.client.engines import connected_call, engines


async def test_glare_losers_stay_bounded_and_the_latest_are_still_ignored_quietly(caplog):
    engine = Engine(EngineConfig(server="ws://127.0.0.1:9", user_id="alice", display_name="Alice"),
                    LocalMedia(tone_hz=440, playback=False))
    ours = engine.call("bob")  # never sent: the engine is not started, its messages wait in the outbox
    losers = [f"fffffffffff-{i:08x}" for i in range(10 * GLARE_LOSERS_KEPT)]  # all sort after ours: ours wins
    for call_id in losers:
        engine._on_message(p.CallIncoming(call_id=call_id, sender="bob"))
    assert list(engine.sessions) == [ours]
    assert len(engine._glare_losers) == GLARE_LOSERS_KEPT
    with caplog.at_level(logging.INFO, logger="callbox.engine"):
        engine._on_message(p.WebrtcOffer(call_id=losers[-1], sender="bob", sdp="v=0"))
        assert not caplog.records  # a late message for a call lost to glare: nothing to say
        engine._on_message(p.WebrtcOffer(call_id=losers[0], sender="bob", sdp="v=0"))
        assert "unknown call" in caplog.text  # long forgotten: an unknown call like any other


async def test_app_mode_keeps_only_the_last_few_finished_calls_and_no_audio(server):
    async with engines(server.url, ("alice", 440), ("bob", 660), keep_finished=False) as (alice, bob):
        for _ in range(RECENT_FINISHED + 2):
            call_id = await connected_call(alice, bob)
            await alice.until(lambda c=call_id: alice.session(c).received.audio_frames > 50)
            alice.engine.hangup(call_id)
            await alice.until(lambda: not alice.engine.sessions and not bob.engine.sessions)
        for probe in (alice, bob):
            assert len(probe.engine.finished) == RECENT_FINISHED
            assert all(not s.received.recent and s.pc is None for s in probe.engine.finished)
        assert abs(alice.engine.finished[-1].received.dominant_hz() - 660) <= 5  # the figure outlives the audio


async def test_headless_and_tests_keep_every_finished_call(server):
    async with engines(server.url, ("alice", 440), ("bob", 660)) as (alice, bob):  # keep_finished=True
        for _ in range(RECENT_FINISHED + 1):
            call_id = await connected_call(alice, bob)
            alice.engine.hangup(call_id)
            await alice.until(lambda: not alice.engine.sessions and not bob.engine.sessions)
        assert len(alice.engine.finished) == len(bob.engine.finished) == RECENT_FINISHED + 1


async def test_app_mode_keeps_the_last_few_room_calls_and_one_record_per_participant(server):
    async with engines(server.url, ("ann", 440), ("ben", 550), keep_finished=False) as (ann, ben):
        for p in (ann, ben):
            p.engine.join_room("team")
        ann.engine.join_room_call("team")
        for _ in range(RECENT_FINISHED + 2):  # ben joins and leaves while ann stays in the call
            ben.engine.join_room_call("team")
            await ann.until(lambda: "ben" in ann.engine.room_call.pairs and
                            ann.engine.room_call.pairs["ben"].received.audio_frames > 10, 15)
            ben.engine.leave_room_call()
            await ann.until(lambda: "ben" not in ann.engine.room_call.pairs)
        assert len(ben.engine.room_calls_finished) == RECENT_FINISHED
        record = ann.engine.room_call.ended["ben"]  # one record, however often ben came and went
        assert record.pairs == RECENT_FINISHED + 2 and record.peer_connections >= RECENT_FINISHED + 2
        assert record.earlier_audio_frames > 10 * (RECENT_FINISHED + 1) and abs(record.earlier_hz - 550) <= 5
