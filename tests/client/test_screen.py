"""Screen sharing through real peer connections, on a real X display (Xvfb) filled with a known colour: headless
processes with --share-screen, and a share stopped and started again mid-call, in a 1:1 call and a room call."""

import asyncio
import json
import threading

from client.core import events as ev
from tests.components import x_display
from tests.support import running_server

from .engines import connected_call, engines
from .test_headless import finish, headless

COLOR = (51, 102, 204)  # "#3366cc": no two channels alike, so a swapped pair of them shows
TOLERANCE = 12  # VP8 at this size moves a flat colour by a few levels


def close_to(rgb, want=COLOR) -> bool:
    return rgb is not None and all(abs(a - b) <= TOLERANCE for a, b in zip(rgb, want, strict=True))


def capture_threads() -> int:
    return sum(t.name == "screen capture" for t in threading.enumerate())


async def test_a_headless_share_arrives_with_the_display_size_and_colour_beside_both_cameras(tmp_path):
    with x_display(1280, 720) as display:
        async with running_server() as srv:
            env = {"DISPLAY": display.name}
            bob = await headless(srv.url, "bob", "--auto-answer", "--tone", "660", "--video", env=env,
                                 report=tmp_path / "b.json")
            alice = await headless(srv.url, "alice", "--call", "bob", "--tone", "440", "--video", "--share-screen",
                                   "--duration", "4", env=env, report=tmp_path / "a.json")
            (rc_a, err_a), (rc_b, err_b) = await asyncio.gather(finish(alice), finish(bob))
    assert rc_a == 0 and rc_b == 0, err_a + err_b
    [got] = json.loads((tmp_path / "b.json").read_text())["calls"]
    screen = got["screen"]
    assert (screen["width"], screen["height"]) == (1280, 720) and screen["frames"] >= 20, screen
    assert close_to(screen["mean_rgb"]) and screen["active"], screen
    [back] = json.loads((tmp_path / "a.json").read_text())["calls"]
    for call in (got, back):  # both cameras' test patterns kept arriving at the same time
        video = call["video"]
        assert video["frames"] > 60 and video["counter_last"] > video["counter_first"] + 60, video
    assert back["screen"]["frames"] == 0 and not back["screen"]["active"]  # bob shared nothing


async def test_a_share_stops_and_starts_again_mid_call_on_both_sides(server, monkeypatch):
    with x_display(800, 600) as display:
        monkeypatch.setenv("DISPLAY", display.name)
        async with engines(server.url, ("alice", 440), ("bob", 660), video=True) as (alice, bob):
            call_id = await connected_call(alice, bob, video=True)
            received = bob.session(call_id).received
            assert alice.engine.share_screen(True) is None
            await bob.until(lambda: received.screen_active and received.screen_frames > 10, 10)
            assert received.screen_size == (800, 600) and close_to(received.screen_rgb)
            assert any(isinstance(e, ev.ScreenShared) and e.peer == "alice" and e.active for e in bob.events)

            alice.engine.share_screen(False)
            await bob.until(lambda: not received.screen_active, 5)
            await asyncio.sleep(0.5)
            stopped_at = received.screen_frames
            await asyncio.sleep(1.0)
            assert received.screen_frames <= stopped_at + 1, "frames kept coming after the share stopped"
            assert capture_threads() == 0
            video = received.video_frames
            await bob.until(lambda: received.video_frames > video + 10, 5)  # the camera goes on

            alice.engine.share_screen(True)  # the same peer connection carries a second share
            await bob.until(lambda: received.screen_active and received.screen_frames > stopped_at + 10, 10)
            assert bob.session(call_id).attempts == 1
            alice.engine.hangup(call_id)
            await alice.until(lambda: not alice.engine.sessions)
            alice.engine.share_screen(False)
            await alice.until(lambda: capture_threads() == 0, 3)


async def test_a_share_in_a_room_call_reaches_everyone(server, monkeypatch):
    with x_display(640, 480) as display:
        monkeypatch.setenv("DISPLAY", display.name)
        async with engines(server.url, ("ann", 440), ("ben", 550), ("cat", 660)) as probes:
            ann, ben, cat = probes
            for p in probes:
                p.engine.join_room("team")
            for p in probes:
                await p.until(lambda p=p: len(p.engine.rooms["team"].members) == 3, 5)
                p.engine.join_room_call("team")
            for p in (ben, cat):
                await p.until(lambda p=p: "ann" in (p.engine.room_call.pairs if p.engine.room_call else {}), 10)
            assert ann.engine.share_screen(True) is None
            for p in (ben, cat):
                await p.until(lambda p=p: p.engine.room_call.pairs["ann"].received.screen_frames > 5 and
                              p.engine.room_call.pairs["ann"].received.screen_active, 15)
                assert close_to(p.engine.room_call.pairs["ann"].received.screen_rgb)
            ann.engine.share_screen(False)
