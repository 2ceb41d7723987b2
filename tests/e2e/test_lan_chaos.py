"""Chaos on a LAN with no fixed host: six headless apps, a random SIGKILL or restart every 5-10 s for about two
minutes (CALLBOX_CHAOS_SECONDS), in a network namespace with only loopback. Five seconds after each blow, exactly
one server is in use, every running app sees every other, and no call between two survivors has ended."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from tests.e2e.lan_nodes import Node, agreement, describe, one_server
from tests.e2e.lanlab import Lan, require_netns

SECONDS = float(os.environ.get("CALLBOX_CHAOS_SECONDS", "120"))
USERS = [f"c{i}" for i in range(6)]
CALLS = {"c0": "c1", "c2": "c3"}  # placed once at the start; restarted apps only answer
QUIET = 5.0

pytestmark = pytest.mark.timeout(SECONDS + 120)


def ended_between_survivors(nodes: dict[str, Node], since: dict[str, float]) -> list[dict]:
    """Calls that ended although both parties' processes ran from before the call until now."""
    bad = []
    for user, node in nodes.items():
        if not node.running:
            continue
        calls = node.events("call")
        for end in (e for e in calls if e["state"] == "ended"):
            peer = nodes.get(end["peer"])
            began = min(e["time"] for e in calls if e["call_id"] == end["call_id"])
            if peer is not None and peer.running and since[user] < began and since[end["peer"]] < began:
                bad.append({"user": user, **end})
    return bad


async def test_chaos(tmp_path):
    require_netns()
    rng = random.Random(os.environ.get("CALLBOX_CHAOS_SEED", "7"))
    async with Lan(logdir=os.environ.get("CALLBOX_CHAOS_LOGS") or tmp_path) as lan:
        nodes: dict[str, Node] = {}
        since: dict[str, float] = {}  # user -> wall time its current process started

        async def start(user: str, *args: str) -> None:
            since[user] = time.time()
            nodes[user] = await Node.start(lan, user, "--auto-answer", "--stay", *args)

        for user in USERS:
            await start(user, *(("--call", CALLS[user]) if user in CALLS else ()))
        await one_server(list(nodes.values()), 20)
        for caller in CALLS:
            await nodes[caller].proc.wait_event(lambda e: isinstance(e, dict) and e.get("state") == "active", 20)

        blows, checks, end = [], 0, time.monotonic() + SECONDS
        while time.monotonic() < end:
            running = [u for u in USERS if nodes[u].running]
            dead = [u for u in USERS if not nodes[u].running]
            host = next((u for u in running if nodes[u].hosting), None)
            choice = rng.random()
            if dead and (choice < 0.35 or len(dead) >= 2):
                user = rng.choice(dead)
                await start(user)
                blows.append(f"start {user}")
            elif choice < 0.75:
                user = host if host is not None and rng.random() < 0.5 else rng.choice(running)
                nodes[user].proc.kill()
                await nodes[user].proc.wait(5)
                blows.append(f"SIGKILL {user}{' (host)' if user == host else ''}")
            else:
                user = rng.choice(running)
                await nodes[user].proc.terminate()
                await start(user)
                blows.append(f"restart {user}{' (host)' if user == host else ''}")
            await asyncio.sleep(QUIET)
            live = list(nodes.values())
            story = f"after {blows}:\n{describe(live)}"
            assert agreement(live) is not None, f"not one server {QUIET:g} s {story}"
            assert not ended_between_survivors(nodes, since), f"{ended_between_survivors(nodes, since)} {story}"
            checks += 1
            await asyncio.sleep(rng.uniform(0, 5))
        print(f"chaos: {len(blows)} blows, {checks} checks passed: {blows}")
        assert checks >= SECONDS / 12
