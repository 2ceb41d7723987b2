"""Rooms across processes: four `callbox --headless --room` clients with a late joiner, and a participant SIGKILLed."""

import asyncio
import json
import os
import signal
import sys

from tests.support import running_server

from .engines import engines

TONES = {"ann": 440, "ben": 550, "cat": 660, "dan": 770}


async def room_client(url, user, tmp_path, *args):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / user / "config"),
           "XDG_DATA_HOME": str(tmp_path / user / "data")}
    cmd = [sys.executable, "-m", "client", "--headless", "--server", url, "--user", user, "--room", "team",
           "--tone", str(TONES[user]), "--report", str(tmp_path / f"{user}.json"), *args]
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, env=env)


async def finish(proc, timeout=60):
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, err.decode()


async def test_four_headless_clients_with_a_late_joiner_hear_each_other_and_read_each_others_lines(tmp_path):
    async with running_server(resume_grace=2.0) as srv:
        first = [await room_client(srv.url, u, tmp_path, "--duration", "10", "--say", f"hi from {u}")
                 for u in ("ann", "ben", "cat")]
        await asyncio.sleep(4)
        late = await room_client(srv.url, "dan", tmp_path, "--duration", "6", "--say", "hi from dan")
        results = await asyncio.gather(*(finish(p) for p in [*first, late]))
    for user, (rc, err) in zip(TONES, results, strict=True):
        assert rc == 0, f"{user}: {err}"
        assert "Traceback" not in err, err
        report = json.loads((tmp_path / f"{user}.json").read_text())
        [room] = report["rooms"]
        assert room["room"] == "team" and room["joined_at"] < room["left_at"]
        others = set(TONES) - {user}
        assert set(room["peers"]) == others
        for peer in others:
            got = room["peers"][peer]
            assert abs(got["audio"]["dominant_hz"] - TONES[peer]) <= 5, (user, peer, got)
            assert got["audio"]["frames"] > 50 and got["peer_connections"] == 1
        lines = {(m["from"], m["text"]) for m in room["messages"]}
        assert {(u, f"hi from {u}") for u in others} <= lines, (user, lines)


async def test_a_killed_participant_leaves_only_itself_within_grace_and_can_rejoin(tmp_path):
    async with running_server(resume_grace=0.5) as srv:
        async with engines(srv.url, ("ann", 440), ("ben", 550)) as (ann, ben):
            for p in (ann, ben):
                p.engine.join_room("team")
                p.engine.join_room_call("team")
            cat = await room_client(srv.url, "cat", tmp_path)
            try:
                def hears(p, user, hz):
                    pair = p.engine.room_call.pairs.get(user) if p.engine.room_call else None
                    return pair is not None and pair.received.audio_frames > 50 and \
                        abs((pair.received.dominant_hz() or 0) - hz) <= 5

                await ann.until(lambda: hears(ann, "cat", 660) and hears(ann, "ben", 550), 20)
                cat.send_signal(signal.SIGKILL)
                await cat.wait()
                loop = asyncio.get_running_loop()
                killed = loop.time()
                await ann.until(lambda: "cat" not in ann.engine.room_call.pairs, 5)
                noticed = loop.time() - killed  # detection (ping 0.1 s + timeout 0.1 s) + grace 0.5 s
                assert ann.engine.room_call.ended["cat"].end_reason == "peer_disconnected"
                assert "cat" not in ben.engine.rooms["team"].call
                frames = ann.engine.room_call.pairs["ben"].received.audio_frames
                await ann.until(lambda: ann.engine.room_call.pairs["ben"].received.audio_frames > frames + 25)
                assert ann.engine.room_call is not None and set(ann.engine.room_call.pairs) == {"ben"}

                cat = await room_client(srv.url, "cat", tmp_path)  # back, as a newcomer
                await ann.until(lambda: hears(ann, "cat", 660), 20)
                await ben.until(lambda: hears(ben, "cat", 660), 10)
                assert ann.engine.room_call.ended["cat"].pairs == 1 and noticed < 3
            finally:
                if cat.returncode is None:
                    cat.send_signal(signal.SIGTERM)
                    rc, err = await finish(cat)
                    assert rc == 0 and "Traceback" not in err, err
        report = json.loads((tmp_path / "cat.json").read_text())
        assert {u: round(r["audio"]["dominant_hz"]) for u, r in report["rooms"][0]["peers"].items()} == {
            "ann": 440, "ben": 550}
