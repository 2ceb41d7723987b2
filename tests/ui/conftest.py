"""Qt test fixtures: offscreen Qt, a qasync loop per test, and apps with synthetic media on a real server."""

import asyncio
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import qasync  # noqa: E402

SCENARIO_TIMEOUT = 100  # seconds: inside pytest-timeout's 120, whose alarm cannot interrupt an idle Qt loop


def bounded(loop: qasync.QEventLoop) -> None:
    """Make each run_until_complete give up after SCENARIO_TIMEOUT, printing every asyncio task's stack: a
    scenario that hangs fails with what it waits on, instead of holding the whole run until CI's limit."""
    run = loop.run_until_complete

    def run_until_complete(coro):
        async def guarded():
            try:
                return await asyncio.wait_for(coro, SCENARIO_TIMEOUT)
            except TimeoutError:
                for task in asyncio.all_tasks():
                    task.print_stack(file=sys.stderr)
                raise AssertionError(f"the scenario did not finish in {SCENARIO_TIMEOUT} s; its tasks' stacks "
                                     "are on stderr") from None

        return run(guarded())

    loop.run_until_complete = run_until_complete


@pytest.fixture
def qloop(qapp):
    """Run a test's coroutine on a qasync loop, so Qt events and asyncio share one thread like in the app."""
    loop = qasync.QEventLoop(qapp, already_running=False)
    bounded(loop)
    asyncio.set_event_loop(loop)
    yield loop
    loop.run_until_complete(asyncio.sleep(0.3))  # let closed peer connections finish their tasks
    loop.close()  # joins the loop's executor threads
    asyncio.set_event_loop(None)


@pytest.fixture
def shared_display(monkeypatch):
    """An Xvfb display filled with #3366cc, as the DISPLAY the apps' screen capture uses."""
    from tests.components import x_display

    with x_display(1280, 720) as display:
        monkeypatch.setenv("DISPLAY", display.name)
        yield display
