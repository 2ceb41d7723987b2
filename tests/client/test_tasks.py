"""The one helper for fire-and-forget tasks: a reference kept while each runs, a failure logged with its name."""

import asyncio
import logging

from client.core.tasks import Tasks


async def test_a_failed_task_is_logged_with_its_name_and_its_exception(caplog):
    tasks = Tasks()

    async def boom():
        raise ValueError("no such codec")

    with caplog.at_level(logging.ERROR, logger="callbox.tasks"):
        task = tasks.spawn(boom(), "call 42 answer")
        await tasks.wait()
    assert task.done() and len(tasks) == 0
    [record] = caplog.records
    assert "call 42 answer" in record.getMessage() and "no such codec" in record.getMessage()
    assert record.exc_info[0] is ValueError  # with its traceback


async def test_tasks_are_kept_until_done_then_close_cancels_the_rest_quietly(caplog):
    tasks = Tasks()
    gate = asyncio.Event()
    quick = tasks.spawn(gate.wait(), "quick")
    slow = tasks.spawn(asyncio.sleep(60), "slow")
    assert len(tasks) == 2
    gate.set()
    await quick
    await asyncio.sleep(0)
    assert len(tasks) == 1 and list(tasks) == [slow]
    with caplog.at_level(logging.ERROR, logger="callbox.tasks"):
        await tasks.close()
    assert slow.cancelled() and len(tasks) == 0
    assert not caplog.records  # a cancelled task is not a failure


async def test_close_from_inside_one_of_its_tasks_does_not_wait_for_itself():
    tasks = Tasks()
    other = tasks.spawn(asyncio.sleep(60), "other")

    async def closer():
        await tasks.close()
        return "closed"

    assert await asyncio.wait_for(tasks.spawn(closer(), "closer"), 2) == "closed"
    assert other.cancelled()
