"""Hundreds of calls set up and torn down in one process leave no memory, tasks or threads behind."""

import asyncio
import gc
import os
import threading

import psutil

from client.core.engine import RECENT_FINISHED
from tests.client.engines import engines

CALLS = int(os.environ.get("CALLBOX_LEAK_CALLS", "500"))
WARMUP = 20


async def one_call(alice, bob):
    call_id = alice.engine.call("bob")
    await bob.until(lambda: call_id in bob.engine.sessions, 5)
    bob.engine.accept(call_id)
    await alice.until(lambda: alice.session(call_id).received.audio_frames > 0, 10)
    alice.engine.hangup(call_id)
    await alice.until(lambda: not alice.engine.sessions and not bob.engine.sessions, 10)
    await alice.until(lambda: alice.engine.media.open_devices == bob.engine.media.open_devices == 0, 10)
    alice.events.clear()
    bob.events.clear()


def held(engine) -> dict:
    """What an engine holds of calls that ended; in app mode none of it may grow with their number."""
    return {"sessions": len(engine.sessions), "finished": len(engine.finished),
            "audio blocks": sum(len(s.received.recent) for s in engine.finished),
            "glare losers": len(engine._glare_losers), "teardowns": len(engine._teardowns)}


def own_threads() -> list[str]:
    """Threads other than the event loop's default executor, a pool that grows on demand up to a fixed size."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def tasks():
    return {t for t in asyncio.all_tasks() if not t.done()}


async def test_many_calls_leave_nothing_behind(server):
    proc = psutil.Process()
    async with engines(server.url, ("alice", 440), ("bob", 660), keep_finished=False) as (alice, bob):  # as the app
        for _ in range(WARMUP):
            await one_call(alice, bob)
        gc.collect()
        await asyncio.sleep(0.2)
        rss0, threads0, tasks0 = proc.memory_info().rss, own_threads(), len(tasks())
        held0 = [held(p.engine) for p in (alice, bob)]
        for _ in range(CALLS):
            await one_call(alice, bob)
        gc.collect()
        await asyncio.sleep(0.2)
        grown = (proc.memory_info().rss - rss0) / 2**20
        print(f"{CALLS} calls: RSS grew {grown:.1f} MiB, threads {threads0}->{own_threads()}, "
              f"tasks {tasks0}->{len(tasks())}")
        assert grown <= 30, f"RSS grew {grown:.1f} MiB over {CALLS} calls"
        assert len(own_threads()) <= len(threads0), (threads0, own_threads())
        assert len(tasks()) <= tasks0, sorted(t.get_name() for t in tasks())
        assert server.hub.calls == {}
        for before, p in zip(held0, (alice, bob), strict=True):
            assert held(p.engine) == before, (before, held(p.engine))
            assert before == {"sessions": 0, "finished": RECENT_FINISHED, "audio blocks": 0, "glare losers": 0,
                              "teardowns": 0}
