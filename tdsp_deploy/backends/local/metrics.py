"""What the router measures: live counters (served at GET /metrics in Prometheus text format)
and an append-only request log (JSON lines), both per deployment.

The log is what A/B analysis reads: one line per live request (variant, latency, status,
request id) and one per shadow request (whether its answer agreed with the live one). Lines
are buffered and flushed at least once a second, so logging never waits on the disk.
"""

from __future__ import annotations

import bisect
import json
import time
from json.encoder import encode_basestring_ascii as _json_string
from typing import IO

# Upper bounds, in seconds, of the latency histogram's buckets.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_EVERY_S = 1.0
FLUSH_LINES = 512
_LIVE_LINE = '{"kind":"live","t":%.6f,"id":%s,"deployment":%s,"status":%d,"latency_ms":%.3f,"pinned":%s}'


class SlotCounters:
    __slots__ = (
        "codes",
        "errors",
        "buckets",
        "latency_sum",
        "count",
        "shadow_agreed",
        "shadow_disagreed",
        "retried",
    )

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.errors = 0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0
        self.count = 0
        self.shadow_agreed = 0
        self.shadow_disagreed = 0
        self.retried = 0  # requests sent to another slot because this one could not be reached


class Measurements:
    """Counters per deployment plus the request log."""

    def __init__(self, endpoint: str, log_path: str | None):
        self.endpoint = endpoint
        self.slots: dict[str, SlotCounters] = {}
        self._log: IO[str] | None = None
        self._log_path: str | None = None
        self._pending: list[str] = []
        self._quoted: dict[str, str] = {}  # deployment names as JSON strings, escaped once
        self._last_flush = time.monotonic()
        self.log_to(log_path)

    def log_to(self, log_path: str | None) -> None:
        """Write the request log there from now on (the counters carry on)."""
        if log_path == self._log_path:
            return
        self.close()
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._log_path = log_path

    def _slot(self, name: str) -> SlotCounters:
        counters = self.slots.get(name)
        if counters is None:
            counters = self.slots[name] = SlotCounters()
        return counters

    def live(self, deployment: str, status: int, seconds: float, request_id: str, pinned: bool) -> None:
        counters = self._slot(deployment)
        counters.codes[status] = counters.codes.get(status, 0) + 1
        if status >= 500:
            counters.errors += 1
        counters.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        counters.latency_sum += seconds
        counters.count += 1
        if self._log is not None:
            # One line per live request, on the router's hot path: formatted by hand with %
            # (fixed decimals rather than round() and repr), the request id escaped by json's
            # encoder and each deployment's name once.
            quoted = self._quoted.get(deployment)
            if quoted is None:
                quoted = self._quoted[deployment] = _json_string(deployment)
            self._write_line(
                _LIVE_LINE
                % (
                    time.time(),
                    _json_string(request_id),
                    quoted,
                    status,
                    seconds * 1000,
                    "true" if pinned else "false",
                )
            )

    def shadow(
        self, deployment: str, status: int, seconds: float, request_id: str, agreed: bool | None
    ) -> None:
        counters = self._slot(deployment)
        if agreed:
            counters.shadow_agreed += 1
        elif agreed is False:
            counters.shadow_disagreed += 1
        if self._log is not None:
            self._write(
                {
                    "kind": "shadow",
                    "t": round(time.time(), 6),
                    "id": request_id,
                    "deployment": deployment,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "agreed": agreed,
                }
            )

    def retried(self, deployment: str) -> None:
        """A request meant for ``deployment`` went to another slot: this one could not be reached."""
        self._slot(deployment).retried += 1

    def _write(self, record: dict) -> None:
        self._write_line(json.dumps(record, separators=(",", ":")))

    def _write_line(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= FLUSH_LINES or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._log is not None and self._pending:
            self._log.write("\n".join(self._pending) + "\n")
            self._log.flush()
            self._pending.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._log is not None:
            self._log.close()
            self._log = None
            self._log_path = None

    def prometheus(self, in_flight: dict[str, int] | None = None) -> bytes:
        """The counters in Prometheus' text exposition format (version 0.0.4), with the
        requests in flight to each deployment right now (a gauge) when given."""
        endpoint = _label(self.endpoint)
        slots = sorted(self.slots.items())
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        def of(deployment: str) -> str:
            return f'endpoint="{endpoint}",deployment="{_label(deployment)}"'

        family(
            "tdsp_requests_total",
            "counter",
            "Requests answered through the endpoint, by deployment and status code.",
        )
        for name, counters in slots:
            out += [
                f'tdsp_requests_total{{{of(name)},code="{code}"}} {n}'
                for code, n in sorted(counters.codes.items())
            ]
        family("tdsp_request_errors_total", "counter", "Requests answered with a status of 500 or more.")
        out += [f"tdsp_request_errors_total{{{of(name)}}} {counters.errors}" for name, counters in slots]
        family(
            "tdsp_request_duration_seconds",
            "histogram",
            "Time from the request's arrival to its answer, at the router.",
        )
        for name, counters in slots:
            labels = of(name)
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), counters.buckets, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'tdsp_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}')
            out.append(f"tdsp_request_duration_seconds_sum{{{labels}}} {counters.latency_sum:.6f}")
            out.append(f"tdsp_request_duration_seconds_count{{{labels}}} {counters.count}")
        family(
            "tdsp_shadow_answers_total",
            "counter",
            "Mirrored requests, by whether the shadow answered as the live slot did.",
        )
        for name, counters in slots:
            if counters.shadow_agreed or counters.shadow_disagreed:
                out.append(f'tdsp_shadow_answers_total{{{of(name)},agreed="true"}} {counters.shadow_agreed}')
                out.append(
                    f'tdsp_shadow_answers_total{{{of(name)},agreed="false"}} {counters.shadow_disagreed}'
                )
        family(
            "tdsp_requests_retried_total",
            "counter",
            "Requests sent to another deployment: this one was unreachable.",
        )
        out += [f"tdsp_requests_retried_total{{{of(name)}}} {counters.retried}" for name, counters in slots]
        if in_flight is not None:
            family("tdsp_requests_in_flight", "gauge", "Requests sent to a deployment and not yet answered.")
            out += [
                f"tdsp_requests_in_flight{{{of(name)}}} {count}" for name, count in sorted(in_flight.items())
            ]
        return ("\n".join(out) + "\n").encode()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
