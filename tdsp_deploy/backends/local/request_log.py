"""Reading the router's request log (``requests.jsonl``) from a point in time on.

The log is never cut (A/B analysis may reach back to the start of an experiment), so it grows
with every request an endpoint has served; a rollout reads it again at every check. Reading it
from its first line each time made every check cost time in proportion to everything the
endpoint had ever served. Its lines are appended in the order they are written, each stamped
with the wall time ``t`` of writing (metrics.py), so the first line at or after a time is found
by bisecting the file's bytes: a read costs about log2(size) short reads plus the lines it
returns.

Two routers can append to one log for a moment (a restart), each flushing what it buffered
(at most ``metrics.FLUSH_EVERY_S`` of lines), and the wall clock can step back a little; so
the scan starts ``MARGIN_S`` before the time asked for and every line is still checked against
it. A line that is still being written (no newline yet) is left for the next read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import IO, Any

# How far before ``since`` the scan starts: covers lines two writers flushed out of order and a
# wall clock stepped back by as much.
MARGIN_S = 10.0


def records_since(handle: IO[bytes], since: float) -> Iterator[dict[str, Any]]:
    """The records of the log open in ``handle`` (binary) stamped at ``since`` or later."""
    handle.seek(_first_line_at(handle, since - MARGIN_S))
    for line in handle:
        if not line.endswith(b"\n"):
            return  # the writer has not finished this line
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("t", 0) >= since:
            yield record


def _first_line_at(handle: IO[bytes], at: float) -> int:
    """The offset of a line start such that the lines before it are stamped before ``at``
    (for a log in time order): a bisection over byte offsets."""
    # Both bounds are line starts (or the end); lines before ``low`` are stamped before ``at``,
    # and ``high`` is the end or a line stamped at ``at`` or later.
    low, high = 0, handle.seek(0, os.SEEK_END)
    while low < high:
        middle = (low + high) // 2
        start = middle if middle == 0 else _next_line(handle, middle - 1)
        if start >= high:  # no line starts in [middle, high): step from low, a line at a time
            start = low
        stamp = _stamp_at(handle, start)
        if stamp is None or stamp >= at:  # None: unreadable or unfinished, so read from there
            high = start
        else:
            low = _next_line(handle, start)
    return low


def _next_line(handle: IO[bytes], offset: int) -> int:
    """The offset just past the newline that ends the line holding ``offset``."""
    handle.seek(offset)
    handle.readline()
    return handle.tell()


def _stamp_at(handle: IO[bytes], start: int) -> float | None:
    """The ``t`` of the line starting at ``start``; None for none (end of file, a line still
    being written, or one that is not a record)."""
    handle.seek(start)
    line = handle.readline()
    if not line.endswith(b"\n"):
        return None
    try:
        stamp = json.loads(line).get("t")
    except (ValueError, AttributeError):
        return None
    return float(stamp) if isinstance(stamp, int | float) else None
