"""The router's request time limits, kept by one timer (deadlines.py): each task is cancelled
at its own deadline, not before and not much after, whatever order the limits came in."""

from __future__ import annotations

import asyncio
import time

from tdsp_deploy.backends.local.deadlines import Deadlines


async def _wait(deadlines: Deadlines, seconds: float, hold: float, log: list) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadlines.watch(task, loop, seconds)  # type: ignore[arg-type]
    try:
        await asyncio.sleep(hold)
        log.append(("done", seconds, round(time.monotonic() - started, 3), deadlines.release(task)))  # type: ignore[arg-type]
    except asyncio.CancelledError:
        log.append(("expired", seconds, round(time.monotonic() - started, 3), deadlines.release(task)))  # type: ignore[arg-type]


def test_each_task_is_cancelled_at_its_own_deadline():
    async def main() -> list:
        deadlines, log = Deadlines(), []
        tasks = [
            asyncio.ensure_future(_wait(deadlines, 0.6, 5.0, log)),  # armed first, expires last
            asyncio.ensure_future(_wait(deadlines, 0.2, 5.0, log)),  # a shorter limit re-arms the timer
            asyncio.ensure_future(_wait(deadlines, 5.0, 0.1, log)),  # done well within its limit
            asyncio.ensure_future(_wait(deadlines, 0.4, 5.0, log)),
        ]
        await asyncio.gather(*tasks)
        assert not deadlines.waiting and not deadlines.expired  # nothing left behind
        deadlines.close()
        return log

    log = asyncio.run(main())
    assert [(what, limit, released) for what, limit, _, released in log] == [
        ("done", 5.0, False),
        ("expired", 0.2, True),
        ("expired", 0.4, True),
        ("expired", 0.6, True),
    ]
    for what, limit, took, _ in log:
        if what == "expired":
            assert limit <= took < limit + 0.25, log


def test_a_released_task_is_never_cancelled_and_the_timer_stops():
    async def main() -> tuple:
        deadlines, log = Deadlines(), []
        for _ in range(100):
            await _wait(deadlines, 0.05, 0.0, log)
        await asyncio.sleep(0.15)  # past every deadline: the timer fired, found none, stayed off
        return log, deadlines.timer, deadlines.waiting

    log, timer, waiting = asyncio.run(main())
    assert all(what == "done" and not released for what, _, _, released in log)
    assert timer is None and not waiting
