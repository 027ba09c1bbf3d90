"""Reading the request log both SQL targets write (sql/schema.py: a row per call and slot).

A/B analysis and rollout guardrails read records, one per scored row (request_records), and
``logs`` the failed calls. The log is read in pages ordered by time: each page starts at the
last one's time, leaving out the rows it already gave (times repeat: the pool's GETUTCDATE()
is coarse, and every slot of a call shares it).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.rows import Tables

#: request log rows read per query
LOG_PAGE = 5000


def records(conn: Any, t: Tables, key: str, started: datetime.datetime) -> Iterator[dict[str, Any]]:
    """The endpoint's request log from ``started`` (UTC, no zone), one record per scored row
    (call_records), in call order. ``conn``: the backend's SqlConnection."""
    page, seen = LOG_PAGE, set[tuple[Any, ...]]()
    while True:
        rows = conn.execute(schema.read_requests(t, page), (key, started), doing="read the request log")
        fresh = [row for row in rows if (row[1], row[2], row[3]) not in seen]
        for row in fresh:
            yield from call_records(*row[1:])
        if len(rows) < page:
            return
        if not fresh:  # a whole page at one time: read more at once
            page *= 2
            continue
        started = rows[-1][1]
        seen = {(r[1], r[2], r[3]) for r in rows if r[1] == started}


def failed_calls(conn: Any, t: Tables, key: str, slot: str, limit: int) -> list[tuple[Any, str]]:
    """(time, line) of the slot's failed calls, newest first, with the engine's error."""
    rows = conn.execute(schema.read_failed_calls(t, limit), (key, slot), doing="read the failed calls")
    return [
        (t, f"{slot}: error: {count} row(s) of call {request_id} failed on version {version}: {message}")
        for t, request_id, version, count, message in rows
    ]


def call_records(
    t: Any,
    request_id: str,
    slot: str,
    version: str,
    status: int,
    row_count: int,
    latency_ms: float | None,
    row_keys: str | None,
    pinned: Any,
    message: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One request log row (a call's rows one slot served) as one record per scored row."""
    # the pool's keys escape only quotes and backslashes (it has no STRING_ESCAPE): control
    # characters are taken as they are
    keys = json.loads(row_keys, strict=False) if row_keys else None
    if keys is None:
        ids = [f"{request_id}:{slot}:{n}" for n in range(int(row_count))]
    else:  # ab_key values (text), or the rows' numbers within the call
        ids = [k if isinstance(k, str) else f"{request_id}:{k}" for k in keys]
    record = {
        "kind": "live",
        "t": timestamp(t),
        "deployment": str(slot),
        "version": str(version),
        "status": int(status),
        "latency_ms": latency_ms,
        "pinned": bool(pinned),
    }
    for row_id in ids:
        yield {**record, "id": row_id}


def sortable(t: Any) -> Any:
    """A timestamp that sorts beside others (the engine's datetime, or a fake's counter)."""
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=None).timestamp()
    return float(t) if isinstance(t, int | float) else 0.0


def timestamp(t: Any) -> float:
    """Unix time of the engine's datetime2 (UTC, without a zone)."""
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=datetime.UTC).timestamp()
    return float(t)


def iso(t: Any) -> str:
    if isinstance(t, datetime.datetime):
        return t.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return str(t)
