"""LoginTurns on a real event loop: a quiet server never makes a login wait; past the budget, logins wait in order."""

import asyncio

from server.turns import LoginTurns


class Passes:
    """Counts passes of the event loop: a task that yields once per pass."""

    def __init__(self):
        self.count = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    def stop(self) -> None:
        self._task.cancel()


async def test_a_quiet_server_lets_every_login_go_at_once():
    turns = LoginTurns(budget=0.02)
    for _ in range(5):
        assert await turns.wait() == 0.0
        turns.took(0.001)  # 5 ms in all: within the budget


async def test_past_its_budget_a_pass_makes_the_rest_wait_and_they_go_in_order_over_later_passes():
    turns, passes, went = LoginTurns(budget=0.01), Passes(), []

    async def login(i: int) -> None:
        came = passes.count
        await turns.wait()
        went.append((i, came, passes.count))
        turns.took(0.05 if i == 0 else 0.004)  # the first spends the pass's budget, and more

    await asyncio.gather(*(login(i) for i in range(40)))
    passes.stop()
    assert [i for i, _, _ in went] == list(range(40))  # in the order they came
    assert went[0][2] == went[0][1] and all(gone > came for _, came, gone in went[1:])  # the rest waited
    per_pass = [sum(1 for *_, gone in went if gone == k) for k in {gone for *_, gone in went}]
    assert len(per_pass) > 3 and max(per_pass) <= 10  # over several passes, none with more than the budget holds


async def test_a_login_cancelled_while_waiting_is_skipped_and_the_next_goes_in_its_place():
    turns, went = LoginTurns(budget=0.01), []

    async def login(i: int) -> None:
        await turns.wait()
        went.append(i)
        turns.took(0.05 if i == 0 else 0.001)

    tasks = [asyncio.create_task(login(i)) for i in range(4)]
    await asyncio.sleep(0)  # the first went and spent the budget; the other three wait
    assert went == [0]
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert went == [0, 2, 3]
