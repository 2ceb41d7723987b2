"""Qt test fixtures: offscreen Qt, a qasync loop per test, and apps with synthetic media on a real server."""

import asyncio
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import qasync  # noqa: E402


@pytest.fixture
def qloop(qapp):
    """Run a test's coroutine on a qasync loop, so Qt events and asyncio share one thread like in the app."""
    loop = qasync.QEventLoop(qapp, already_running=False)
    asyncio.set_event_loop(loop)
    yield loop
    loop.run_until_complete(asyncio.sleep(0.3))  # let closed peer connections finish their tasks
    loop.close()  # joins the loop's executor threads
    asyncio.set_event_loop(None)
