"""A call across the two nodes of a cluster, as real processes see it: headless apps with both nodes' addresses,
two callbox-server --redis processes on a real redis-server, and SIGKILL of one node mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess

import pytest

from tests.components import redis_server
from tests.e2e.lan_nodes import Node, callbox
from tests.e2e.lanlab import LINE_LIMIT, Proc
from tests.server.test_cluster import _free_port, node_process

pytestmark = pytest.mark.timeout(120)


async def _spawn(user: str, tmp_path, *args: str) -> Node:
    log = tmp_path / f"{user}.log"
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            *callbox(user, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, limit=LINE_LIMIT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                         "XDG_CONFIG_HOME": str(tmp_path / user / "config"),
                                         "XDG_DATA_HOME": str(tmp_path / user / "data")})
    return Node(user, Proc(user, process, log))


async def test_a_call_across_nodes_goes_on_through_the_death_of_one_node(tmp_path):
    """alice is on node A, bob on node B, in a call with audio and video. SIGKILL node A: alice moves to B (the
    next address in her list) and resumes there, media never stops on either side, neither call ends, and each
    sees the other in_call again."""
    with redis_server() as redis:
        a_port, b_port = _free_port(), _free_port()
        a, b = f"ws://127.0.0.1:{a_port}", f"ws://127.0.0.1:{b_port}"
        with node_process(redis.url, a_port, tmp_path / "a") as node_a, \
                node_process(redis.url, b_port, tmp_path / "b"):
            bob = await _spawn("bob", tmp_path, "--server", f"{b},{a}", "--auto-answer", "--tone", "660", "--video")
            await bob.proc.wait_event("connected", 15)
            alice = await _spawn("alice", tmp_path, "--server", f"{a},{b}", "--call", "bob", "--video")
            try:
                active = await alice.proc.wait_event(
                    lambda e: isinstance(e, dict) and e.get("state") == "active", 30)
                call_id = active["call_id"]
                await asyncio.sleep(2)
                node_a.kill()
                moved = await alice.proc.wait_event(
                    lambda e: isinstance(e, dict) and e["event"] == "connected" and e["server"] == b, 15)
                await alice.proc.wait_event(lambda e: isinstance(e, dict) and e["event"] == "presence"
                                            and e["user_id"] == "bob" and e["status"] == "in_call"
                                            and e["time"] >= moved["time"] - 0.01, 10)
                await asyncio.sleep(3)
                for who in (alice, bob):
                    frames = [(e["audio_frames"], e["video_frames"]) for e in who.events("media")
                              if e["call_id"] == call_id]
                    assert len(frames) >= 5, frames
                    for (a0, v0), (a1, v1) in zip(frames, frames[1:], strict=False):
                        assert a1 > a0 and v1 > v0, f"{who.user}'s media stalled (every second): {frames}"
                    assert not [e for e in who.events("call") if e["state"] == "ended"], f"{who.user}'s call ended"
                assert bob.sees()["alice"] == "in_call" and alice.sees()["bob"] == "in_call"
            finally:
                for who in (alice, bob):
                    with contextlib.suppress(Exception):
                        await who.proc.terminate()

