"""Time limits on the router's requests to the slots, kept by one timer for them all.

A request to a slot must be answered within the endpoint's ``request_timeout_s`` (a 504
otherwise). A timer per request (``call_later`` when it is sent, ``cancel`` when it is
answered) was a large part of what an answer cost the router. Here each request in flight only
records its deadline in a dict; one timer, armed at the earliest deadline it knows of, fires,
cancels the tasks whose time is up and re-arms itself at the next deadline. While requests are
answered well within their limit, that timer fires about once per ``request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import math

# A timer may fire up to a millisecond early (the loop keeps time in milliseconds): a deadline
# that close counts as reached, rather than arming a timer for what is left.
SLACK_S = 0.001


class Deadlines:
    """Tasks that must be done by a time; ``watch`` one, ``release`` it when it is done."""

    def __init__(self) -> None:
        self.waiting: dict[asyncio.Task[object], float] = {}
        self.expired: set[asyncio.Task[object]] = set()  # cancelled for their time, until released
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    def watch(self, task: asyncio.Task[object], loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        at = loop.time() + seconds
        self.waiting[task] = at
        if at < self.timer_at:  # earlier than the timer armed (the first, or a shorter limit)
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(at, self._fire, loop)
            self.timer_at = at

    def release(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; True when its time ran out (it was cancelled for that)."""
        self.waiting.pop(task, None)
        if self.expired and task in self.expired:
            self.expired.discard(task)
            return True
        return False

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer, self.timer_at = None, math.inf
        now = loop.time() + SLACK_S
        following = math.inf
        for task, at in list(self.waiting.items()):
            if at <= now:
                del self.waiting[task]
                self.expired.add(task)
                task.cancel()
            elif at < following:
                following = at
        if following < math.inf:
            self.timer = loop.call_at(following, self._fire, loop)
            self.timer_at = following

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer, self.timer_at = None, math.inf
