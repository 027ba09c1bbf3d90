"""`status --watch` and `status --all`: snapshots of endpoints, with live request rates.

A snapshot is what ``Backend.status()`` says plus, where the target reports live counters
(``capabilities.metrics``: the local target's router), requests per second, error rate and
p95 latency per deployment over the time since the previous snapshot. On a terminal the table
is redrawn in place until Ctrl-C; elsewhere (a pipe, a CI log, ``--json``) every refresh is one
JSON document on its own line, so that ``jq`` or a log collector can follow it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import SlotCounters
from tdsp_deploy.errors import BackendError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Backend, EndpointStatus
    from tdsp_deploy.backends.registry import Registry
    from tdsp_deploy.output import Environment


# -- metrics ------------------------------------------------------------------------------------
def quantile_ms(counters: SlotCounters, q: float) -> float | None:
    """The ``q`` quantile of latency from the histogram, interpolated within its bucket as
    Prometheus' histogram_quantile does; None without requests."""
    if not counters.buckets:
        return None
    total = counters.buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in counters.buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound * 1000  # beyond the last bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000
        lower_bound, lower_count = bound, count
    return lower_bound * 1000


# -- snapshots ----------------------------------------------------------------------------------
@dataclasses.dataclass
class EndpointSnapshot:
    status: EndpointStatus
    taken_at: float
    rates: dict[str, dict[str, Any]]  # deployment -> requests, requests_per_second, error_rate, p95_ms
    last_deploy: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.status.to_json(),
            "time": round(self.taken_at, 3),
            "metrics": self.rates,
            "last_deploy": self.last_deploy,
        }


class EndpointWatcher:
    """Takes snapshots of one endpoint; rates are over the time since the previous snapshot
    (since the router started, for the first one)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._previous: tuple[float, dict[str, SlotCounters]] | None = None

    def snapshot(self) -> EndpointSnapshot:
        status = self.backend.status()
        now = time.time()
        counters = self._counters(status)
        rates: dict[str, dict[str, Any]] = {}
        if counters is not None:
            previous_time, previous = self._previous or (None, {})
            for slot in status.slots:
                total = counters.get(slot.name, SlotCounters())
                window = total.minus(previous.get(slot.name, SlotCounters()))
                seconds = now - previous_time if previous_time is not None else None
                rates[slot.name] = {
                    "requests": total.requests,
                    "errors": total.errors,
                    "requests_per_second": round(window.requests / seconds, 3) if seconds else None,
                    "error_rate": round(window.errors / window.requests, 4) if window.requests else None,
                    "p95_ms": _rounded(quantile_ms(window, 0.95)),
                }
            self._previous = (now, counters)
        return EndpointSnapshot(status, now, rates, _last_deploy(status))

    def _counters(self, status: EndpointStatus) -> dict[str, SlotCounters] | None:
        """The endpoint's counters, or None when it reports none (or cannot now)."""
        if not self.backend.capabilities.metrics or not status.exists:
            return None
        try:
            return self.backend.live_counters(status)
        except BackendError:
            return None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _last_deploy(status: EndpointStatus) -> dict[str, Any] | None:
    deployed = [(s.details.get("deployed_at"), s.name) for s in status.slots if s.details.get("deployed_at")]
    if not deployed:
        return None
    at, slot = max(deployed)
    return {"deployment": slot, "time": round(float(at), 3)}


def local_backends(home: Any = None, registry: Registry | None = None) -> list[Backend]:
    """A backend for every endpoint deployed on this machine's local target, by name."""
    from tdsp_deploy.backends.registry import Registry

    return (registry or Registry.discover()).factory("local").endpoints_on_this_machine(home=home)


# -- rendering ------------------------------------------------------------------------------------
COLUMNS = (
    "endpoint",
    "deployment",
    "state",
    "traffic",
    "mirror",
    "version",
    "req/s",
    "p95 ms",
    "errors",
    "restarts",
    "deployed",
)
NUMBERS = frozenset({"traffic", "mirror", "req/s", "p95 ms", "errors"})
# Why the supervisor restarted a slot, in the status table and in the lines under it.
RESTART_REASONS = {"exit": "ended", "liveness": "hung"}
RESTART_EXPLAINED = {"exit": "its process ended", "liveness": "it hung: its liveness probe went unanswered"}


def table(env: Environment, snapshots: list[EndpointSnapshot], *, title: str | None = None) -> Any:
    """One rich table: a row per deployment (and a column for the endpoint when there are several;
    one for restarts when the supervisor restarted any)."""
    from rich import box
    from rich.table import Table

    rows: list[dict[str, str]] = []
    for snapshot in snapshots:
        status = snapshot.status
        if not status.slots:
            state = "no deployment" if status.exists else "not deployed"
            rows.append({"endpoint": status.name, "deployment": "-", "state": state})
        for slot in status.slots:
            rates = snapshot.rates.get(slot.name, {})
            rows.append(
                {
                    "endpoint": status.name,
                    "deployment": slot.name,
                    "state": slot.state,
                    "traffic": f"{slot.traffic}%",
                    "mirror": f"{slot.mirror}%" if slot.mirror else "-",
                    "version": slot.model_version or "-",
                    "req/s": _number(rates.get("requests_per_second"), "{:.1f}"),
                    "p95 ms": _number(rates.get("p95_ms"), "{:.1f}"),
                    "errors": _number(rates.get("error_rate"), "{:.1%}"),
                    "restarts": restarts(slot.details) or "-",
                    "deployed": _when(slot.details.get("deployed_at")),
                }
            )
    columns = [
        column
        for column in COLUMNS
        if (column != "endpoint" or len(snapshots) > 1)
        and (column != "restarts" or any(row.get("restarts", "-") != "-" for row in rows))
    ]
    grid = Table(
        title=title,
        box=box.SIMPLE if env.colors else box.ASCII,
        title_justify="left",
    )
    for column in columns:  # the restarts cell may fold on a narrow terminal; the others not
        grid.add_column(
            column, justify="right" if column in NUMBERS else "left", no_wrap=column != "restarts"
        )
    for row in rows:
        grid.add_row(*(row.get(column, "-") for column in columns))
    return grid


def restarts(details: dict[str, Any]) -> str | None:
    """The table's cell: how often the supervisor restarted a slot, why and when the last time
    (``2 (hung, 11-30 07:41)``); None when it never did."""
    count = details.get("restarts") or 0
    if not count:
        return None
    reason = details.get("last_restart_reason")
    last = [RESTART_REASONS.get(reason, reason)] if reason else []
    if details.get("last_restart_at"):
        last.append(_when(details["last_restart_at"]))
    return f"{count} ({', '.join(last)})" if last else str(count)


def restart_lines(status: EndpointStatus) -> list[str]:
    """A line per slot the supervisor restarted, under the plain `status` table."""
    lines = []
    for slot in status.slots:
        count = slot.details.get("restarts") or 0
        if not count:
            continue
        line = f"{slot.name}: restarted {count} time{'s' if count != 1 else ''} by the supervisor"
        at = slot.details.get("last_restart_at")
        if at:
            line += ", last at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
        reason = slot.details.get("last_restart_reason")
        if reason:
            line += f" ({RESTART_EXPLAINED.get(reason, reason)})"
        lines.append(line)
    return lines


def _number(value: Any, shape: str) -> str:
    return "-" if value is None else shape.format(value)


def _when(timestamp: Any) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%m-%d %H:%M", time.localtime(float(timestamp)))


def headline(snapshots: list[EndpointSnapshot]) -> str:
    """A line above the table: where each endpoint answers and whether its router runs."""
    lines = []
    for snapshot in snapshots:
        status = snapshot.status
        router = status.details.get("router", {})
        state = f", router {router['state']}" if router.get("state") else ""
        lines.append(f"{status.name} ({status.kind}{state}): {status.scoring_uri or '-'}")
    return "\n".join(lines)


# -- the loop -------------------------------------------------------------------------------------
def watch(
    env: Environment,
    take: Callable[[], list[EndpointSnapshot]],
    *,
    interval: float,
    count: int | None = None,
    health: Callable[[list[EndpointSnapshot]], int] = lambda _: 0,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Refresh every ``interval`` seconds, ``count`` times (None: until Ctrl-C).

    Returns the health exit code of the last refresh after ``count`` refreshes, 130 when
    interrupted (the table or the JSON lines written so far stay as they are).

    Ctrl-C (or SIGTERM) only raises a flag that the loop reads between refreshes. Raised as
    KeyboardInterrupt it could land anywhere: inside a write (half a line), or inside a
    finalizer that the garbage collector happens to run (a closed socket's ``__del__``), where
    Python prints "Exception ignored ... Traceback" and swallows it, so the watch went on."""
    stop = threading.Event()
    pause = sleep or stop.wait
    with _signals_set(stop):
        live_table = env.stderr_isatty and not env.json_mode
        if live_table:
            return _watch_table(env, take, interval=interval, count=count, health=health, sleep=pause, stop=stop)
        done = 0
        while not stop.is_set():
            snapshots = take()
            if stop.is_set():
                break
            line = env.secrets.data({"endpoints": [s.to_json() for s in snapshots]})
            env.stdout.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
            env.stdout.flush()
            done += 1
            if count is not None and done >= count:
                return health(snapshots)
            pause(interval)
    return 130


@contextlib.contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` instead of raising (main thread only:
    elsewhere no handler can be installed, and Ctrl-C reaches the main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_flag(signum: int, frame: object) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, raise_flag) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _watch_table(
    env: Environment,
    take: Callable[[], list[EndpointSnapshot]],
    *,
    interval: float,
    count: int | None,
    health: Callable[[list[EndpointSnapshot]], int],
    sleep: Callable[[float], None],
    stop: threading.Event,
) -> int:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def view(snapshots: list[EndpointSnapshot]) -> Any:
        stamp = time.strftime("%H:%M:%S")
        caption = f"every {interval:g} s, last at {stamp}; Ctrl-C to stop"
        return Group(Text(headline(snapshots)), table(env, snapshots), Text(caption, style="dim"))

    snapshots = take()
    with Live(
        view(snapshots), console=env.console(), auto_refresh=False, vertical_overflow="visible"
    ) as live:
        done = 1
        while count is None or done < count:
            sleep(interval)
            if stop.is_set():
                return 130
            snapshots = take()
            if stop.is_set():
                return 130
            live.update(view(snapshots), refresh=True)
            done += 1
    return 130 if stop.is_set() else health(snapshots)
