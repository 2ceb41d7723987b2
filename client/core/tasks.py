"""Background tasks that nobody awaits: a reference kept until each is done, its failure logged under its name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

log = logging.getLogger("callbox.tasks")


class Tasks:
    """A small TaskGroup for fire-and-forget work: `spawn` never loses a task to the garbage collector nor its
    exception to silence, `wait` lets the running ones finish, `close` cancels them and waits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self):
        return iter(list(self._tasks))

    async def wait(self) -> None:
        """Until every task (but the one calling) has finished; failures are logged, not raised."""
        me = asyncio.current_task()
        while tasks := [t for t in self._tasks if t is not me]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel every task (but the one calling) and wait for them to finish."""
        me = asyncio.current_task()
        while tasks := [t for t in self._tasks if t is not me]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
