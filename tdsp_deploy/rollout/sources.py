"""Where a rollout reads the live metrics of each deployment, per target.

A source gives, for the time since a cursor it handed out, each deployment's requests,
errors (status >= 500), latencies (binned, see tdsp_deploy.ab.sequential) and mirrored
answers that agreed or not. What a target can report at all is declared in
``REPORTED_METRICS`` (without importing anything heavy), which ``validate`` and ``push``
consult before a rollout starts.

The local target: the router's per-deployment counters (``GET /metrics``) for requests and
errors, and its request log for each request's latency and the shadow answers (pinned
requests, such as a smoke test's, are left out: they are not live traffic).
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

from tdsp_deploy.errors import BackendError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from tdsp_deploy.backends.base import Backend

ERROR_RATE, LATENCY, MIRROR = "error rate", "latency", "mirror agreement"
REPORTED_METRICS: dict[str, frozenset[str]] = {
    "local": frozenset({ERROR_RATE, LATENCY, MIRROR}),
    # Azure Monitor: requests by status class and latency quantiles per minute; no mirror
    "azureml": frozenset({ERROR_RATE, LATENCY}),
    # the request log table the generated procedures write: each call's slot, status, time
    "sqlserver": frozenset({ERROR_RATE, LATENCY}),
    "synapse": frozenset({ERROR_RATE, LATENCY}),
}
GUARDRAIL_METRIC = {
    "max_error_rate": ERROR_RATE,
    "max_error_rate_increase": ERROR_RATE,
    "max_p95_ms": LATENCY,
    "max_p99_ms": LATENCY,
    "max_p95_increase_ms": LATENCY,
    "max_p99_increase_ms": LATENCY,
    "max_mirror_disagreement": MIRROR,
}


def unreported(kind: str, guardrails: dict[str, Any]) -> list[str]:
    """The guardrails set in ``guardrails`` whose metric the ``kind`` target cannot report."""
    reported = REPORTED_METRICS.get(kind, frozenset())
    return [
        name
        for name, metric in GUARDRAIL_METRIC.items()
        if guardrails.get(name) is not None and metric not in reported
    ]


@dataclasses.dataclass
class ArmWindow:
    """What one deployment answered since the cursor."""

    requests: int = 0
    errors: int = 0
    latency: np.ndarray | None = None  # counts per bin of sequential.LATENCY_EDGES_MS
    shadow_agreed: int = 0
    shadow_disagreed: int = 0
    # where only aggregates exist (Azure Monitor): each minute's latency quantiles, by "p95"...
    minutes: dict[str, list[float]] | None = None

    def latency_counts(self) -> np.ndarray:
        import numpy as np

        from tdsp_deploy.ab import sequential

        if self.latency is None:
            return np.zeros(len(sequential.LATENCY_EDGES_MS) + 1, dtype=np.int64)
        return self.latency


class MetricSource(Protocol):
    def begin(self) -> dict[str, Any]:
        """A cursor (JSON-able): the point from which ``read`` counts."""

    def read(self, cursor: dict[str, Any]) -> dict[str, ArmWindow]:
        """Each deployment's window since ``cursor``."""


def metric_source(backend: Backend) -> MetricSource:
    """The source for the backend's target; a UsageError when it has none."""
    if backend.kind == "local":
        return LocalMetricSource(backend)
    if backend.kind == "azureml":
        return AzureMonitorSource(backend.minute_metrics())
    if backend.kind in ("sqlserver", "synapse"):
        return RequestLogSource(backend)
    raise UsageError(
        f"the {backend.kind} target reports no live metrics to a staged rollout yet",
        hint="use rollout.traffic (one step), or an A/B experiment (tdsp-deploy ab start)",
    )


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_counters(text: str) -> dict[str, dict[str, int]]:
    """``tdsp_requests_total`` and ``tdsp_request_errors_total`` from the router's Prometheus
    text, per deployment: ``{"blue": {"requests": 120, "errors": 2}}``."""
    counters: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or match["name"] not in ("tdsp_requests_total", "tdsp_request_errors_total"):
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        deployment = labels.get("deployment")
        if deployment is None:
            continue
        entry = counters.setdefault(deployment, {"requests": 0, "errors": 0})
        key = "requests" if match["name"] == "tdsp_requests_total" else "errors"
        entry[key] += int(float(match["value"]))
    return counters


class LocalMetricSource:
    """The local router's counters and request log, read through the backend."""

    def __init__(self, backend: Backend, *, timeout: float = 5.0):
        self.backend = backend
        self.timeout = timeout

    def _counters(self) -> dict[str, dict[str, int]]:
        status = self.backend.status()
        if not status.scoring_uri:
            raise BackendError(f"endpoint '{status.name}' has no address to read its metrics from")
        url = urllib.parse.urlsplit(status.scoring_uri)
        key = self.backend.credentials()["primary_key"]
        try:
            connection = http.client.HTTPConnection(
                url.hostname or "127.0.0.1", url.port, timeout=self.timeout
            )
            connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
            response = connection.getresponse()
            body = response.read().decode("utf-8", "replace")
            connection.close()
        except (OSError, http.client.HTTPException) as exc:
            raise BackendError(
                f"the router of endpoint '{status.name}' did not answer GET /metrics: {exc}",
                hint="check `tdsp-deploy status`; a push brings a stopped router back",
            ) from exc
        if response.status != 200:
            raise BackendError(f"GET /metrics answered {response.status}")
        return parse_counters(body)

    def begin(self) -> dict[str, Any]:
        return {"t": time.time(), "counters": self._counters()}

    def read(self, cursor: dict[str, Any]) -> dict[str, ArmWindow]:
        from tdsp_deploy.ab import sequential

        counters = self._counters()
        windows: dict[str, ArmWindow] = {}
        for deployment, now in counters.items():
            then = cursor.get("counters", {}).get(deployment, {"requests": 0, "errors": 0})
            # a router restarted since the cursor counts from zero again: take what it has
            restarted = now["requests"] < then["requests"]
            base = {"requests": 0, "errors": 0} if restarted else then
            windows[deployment] = ArmWindow(
                requests=now["requests"] - base["requests"], errors=now["errors"] - base["errors"]
            )
        latencies: dict[str, list[float]] = {}
        for record in self.backend.request_records(float(cursor["t"])):
            deployment = record.get("deployment")
            if not isinstance(deployment, str):
                continue
            window = windows.setdefault(deployment, ArmWindow())
            if record.get("kind") == "shadow":
                if record.get("agreed") is True:
                    window.shadow_agreed += 1
                elif record.get("agreed") is False:
                    window.shadow_disagreed += 1
            elif record.get("kind") == "live" and not record.get("pinned"):
                latencies.setdefault(deployment, []).append(float(record.get("latency_ms", 0.0)))
        for deployment, values in latencies.items():
            windows[deployment].latency = sequential.latency_counts(values)
        return windows


@dataclasses.dataclass
class AzureMonitorSource:
    """Azure ML: the endpoint's per-deployment minutes from Azure Monitor (whole minutes only,
    so a look reads the minutes completed since the cursor; check_every of a minute or more)."""

    metrics: Any
    clock: Any = dataclasses.field(default=time.time, kw_only=True)

    def begin(self) -> dict[str, Any]:
        return {"t": self.clock()}

    def read(self, cursor: dict[str, Any]) -> dict[str, ArmWindow]:
        import datetime as dt

        start = dt.datetime.fromtimestamp(float(cursor["t"]), tz=dt.UTC)
        end = dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC).replace(second=0, microsecond=0)
        if end <= start:
            return {}
        return {
            deployment: ArmWindow(requests=m.requests, errors=m.errors, minutes=m.quantiles)
            for deployment, m in self.metrics.read(start, end).items()
        }


@dataclasses.dataclass
class RequestLogSource:
    """SQL Server and the Synapse SQL pool: the request log table, read through the backend's
    ``request_records`` (one record per scored row). The rows of one call that one slot
    scored share its status and time, so they are counted as one request: a failed call is
    one error, not as many as it had rows, and a big batch does not outweigh the others."""

    backend: Backend
    clock: Any = dataclasses.field(default=time.time, kw_only=True)

    def begin(self) -> dict[str, Any]:
        return {"t": self.clock()}

    def read(self, cursor: dict[str, Any]) -> dict[str, ArmWindow]:
        from tdsp_deploy.ab import sequential

        calls: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in self.backend.request_records(float(cursor["t"])):
            if record.get("kind") != "live" or record.get("pinned"):
                continue
            key = (record.get("t"), record.get("deployment"), record.get("status"), record.get("latency_ms"))
            calls.setdefault(key, record)
        windows: dict[str, ArmWindow] = {}
        latencies: dict[str, list[float]] = {}
        for record in calls.values():
            deployment = str(record.get("deployment"))
            window = windows.setdefault(deployment, ArmWindow())
            window.requests += 1
            window.errors += int(int(record.get("status") or 0) >= 500)
            if isinstance(record.get("latency_ms"), int | float):
                latencies.setdefault(deployment, []).append(float(record["latency_ms"]))
        for deployment, values in latencies.items():
            windows[deployment].latency = sequential.latency_counts(values)
        return windows
