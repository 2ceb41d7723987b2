"""`callbox --headless` as scripts run it: two processes call each other; a killed peer is noticed."""

import asyncio
import json
import os
import signal
import sys

from tests.support import BUSY, running_server


async def headless(url, user, *args, report=None, env=None):
    cmd = [sys.executable, "-m", "client", "--headless", "--server", url, "--user", user, *args]
    if report:
        cmd += ["--report", str(report)]
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})


async def finish(proc, timeout=40):
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, err.decode()


async def test_two_headless_clients_hear_each_other(tmp_path):
    async with running_server(**BUSY) as srv:  # two processes encoding video: the tests' 100 ms ping cut them off
        bob = await headless(srv.url, "bob", "--auto-answer", "--tone", "660", "--video", report=tmp_path / "b.json")
        alice = await headless(srv.url, "alice", "--call", "bob", "--tone", "440", "--video", "--duration", "3",
                               report=tmp_path / "a.json")
        (rc_a, err_a), (rc_b, err_b) = await asyncio.gather(finish(alice), finish(bob))
        assert rc_a == 0, err_a
        assert rc_b == 0, err_b
        a = json.loads((tmp_path / "a.json").read_text())
        b = json.loads((tmp_path / "b.json").read_text())
        assert a["user"] == "alice" and len(a["calls"]) == 1 and len(b["calls"]) == 1
        ca, cb = a["calls"][0], b["calls"][0]
        assert ca["call_id"] == cb["call_id"] and ca["peer"] == "bob" and cb["peer"] == "alice"
        assert ca["direction"] == "outgoing" and cb["direction"] == "incoming"
        assert abs(ca["audio"]["dominant_hz"] - 660) <= 5 and abs(cb["audio"]["dominant_hz"] - 440) <= 5
        assert [s["state"] for s in ca["states"]] == ["ringing", "connecting", "active", "ended"]
        assert ca["setup_ms"] > 0 and ca["audio"]["frames"] > 100
        for c in (ca, cb):
            assert (c["video"]["width"], c["video"]["height"]) == (640, 480)
            assert c["video"]["counter_last"] > c["video"]["counter_first"]
            assert c["end_reason"] == "hangup"
        assert "Traceback" not in err_a + err_b


async def test_unanswered_call_exits_non_zero(tmp_path):
    async with running_server(ring_timeout=0.5) as srv:
        bob = await headless(srv.url, "bob")  # online, never answers
        try:
            alice = await headless(srv.url, "alice", "--call", "bob", "--tone", "440", report=tmp_path / "a.json")
            rc, err = await finish(alice)
            assert rc == 1, err
            assert json.loads((tmp_path / "a.json").read_text())["calls"][0]["end_reason"] == "no_answer"
        finally:
            bob.send_signal(signal.SIGTERM)
            assert (await finish(bob))[0] == 0


async def test_killed_peer_ends_the_call_with_peer_disconnected(tmp_path):
    grace = 1.0
    async with running_server(resume_grace=grace, ping_interval=0.2) as srv:
        bob = await headless(srv.url, "bob", "--auto-answer", "--tone", "660")
        alice = await headless(srv.url, "alice", "--call", "bob", "--tone", "440", report=tmp_path / "a.json")

        async def in_call():
            while srv.hub.status("bob") != "in_call":
                await asyncio.sleep(0.05)

        await asyncio.wait_for(in_call(), 20)
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        os.kill(bob.pid, signal.SIGKILL)
        rc, err = await finish(alice)
        elapsed = loop.time() - killed_at
        report = json.loads((tmp_path / "a.json").read_text())
        assert report["calls"][0]["end_reason"] == "peer_disconnected"
        assert rc == 1  # the call did not end normally
        assert elapsed <= 0.2 + 0.1 + grace + 2.0  # detection (ping + timeout) + grace + process exit
        await bob.wait()


async def test_self_test_passes_and_reports():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "client", "--self-test",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "selftest-a hears 660.0 Hz" in text and "selftest-b hears 440.0 Hz" in text
    assert text.rstrip().endswith("self-test passed")


async def next_event(proc, kind: str, timeout: float = 20) -> dict:
    """The next --events line of this kind on the process's stdout."""
    async with asyncio.timeout(timeout):
        while line := await proc.stdout.readline():
            if (event := json.loads(line))["event"] == kind:
                return event
    raise AssertionError(f"stdout ended before a {kind!r} event")


async def test_server_list_moves_to_the_next_when_the_one_in_use_stops():
    async with running_server() as a, running_server() as b:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", "--headless", "--server", f",{a.url},,{b.url},", "--user", "alice",
            "--tone", "440", "--events", "--stay", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            first = await next_event(proc, "connected")
            assert (first["server"], first["how"], first["server_id"]) == (a.url, "configured", a.hub.config.server_id)
            await a.stop()
            assert (await next_event(proc, "disconnected"))["reason"]
            second = await next_event(proc, "connected")
            assert (second["server"], second["how"], second["server_id"]) == (b.url, "configured",
                                                                              b.hub.config.server_id)
            assert b.hub.status("alice") == "online"
        finally:
            proc.send_signal(signal.SIGTERM)
            rc, err = await finish(proc)
        assert rc == 0, err
        assert "Traceback" not in err


async def test_a_bad_address_in_the_server_list_is_named_and_exits_non_zero():
    async with running_server() as srv:
        rc, err = await finish(await headless(f"{srv.url},http://b:8765", "alice", "--tone", "440"), timeout=20)
        assert rc == 1, err
        assert "'http://b:8765' is not a ws:// or wss:// address" in err and "Traceback" not in err
        assert srv.hub.status("alice") == "offline"
