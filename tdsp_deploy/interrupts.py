"""Ctrl-C and SIGTERM while something must not be cut in half.

A push interrupted once rolls back; a second signal soon after (two Ctrl-C, or a CI
cancellation's SIGINT then SIGTERM) must not cut that rollback short and leave the new
deployment's server running. Two guards:

- ``first_only()``: the first signal interrupts (KeyboardInterrupt, as usual); later ones are
  only noted until the block ends, so the rollback the first one started runs to its end.
- ``deferred()``: a signal inside the block is held until the block ends, then raised; for a
  few statements that must happen together (start a process and record it).

Signal handlers can only be installed from the main thread; elsewhere both guards do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _installable() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handled_by(handler: Callable[[int, Any], None]) -> Iterator[dict[int, Any]]:
    """SIGINT and SIGTERM go to ``handler`` inside the block; the handlers they had before
    (yielded, by signal) are put back when it ends, however it ends."""
    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def first_only(on_repeat: Callable[[], None] | None = None) -> Iterator[None]:
    """The first SIGINT/SIGTERM raises KeyboardInterrupt; later ones call ``on_repeat`` and
    are otherwise ignored until the block ends."""
    if not _installable():
        yield
        return
    seen = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise KeyboardInterrupt
        if on_repeat is not None:
            on_repeat()

    with _handled_by(handler):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then hand the first one to the handler that
    was there before (inside ``first_only`` during a rollback, that one only notes it); none
    when the block is already leaving with an exception (which then goes on as it was)."""
    if not _installable():
        yield
        return
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    with _handled_by(handler) as previous:
        yield
    if seen:
        before = previous[seen[0]]
        if callable(before):
            before(seen[0], None)
        elif before != signal.SIG_IGN:
            raise KeyboardInterrupt
