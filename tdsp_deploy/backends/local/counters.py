"""The router's counters read back: ``GET /metrics`` (Prometheus text format 0.0.4, written by
metrics.py) parsed into each deployment's ``SlotCounters``, for ``status --watch``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tdsp_deploy.backends.base import SlotCounters
from tdsp_deploy.errors import BackendError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import EndpointStatus

METRICS_TIMEOUT_S = 2.0
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, SlotCounters]:
    """Per-deployment counters from the router's ``/metrics``."""
    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    buckets: dict[str, list[tuple[float, int]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        deployment = labels.get("deployment")
        if deployment is None:
            continue
        value = float(match["value"])
        if match["name"] == "tdsp_requests_total":
            requests[deployment] = requests.get(deployment, 0) + int(value)
        elif match["name"] == "tdsp_request_errors_total":
            errors[deployment] = int(value)
        elif match["name"] == "tdsp_request_duration_seconds_bucket":
            bound = float("inf") if labels.get("le") == "+Inf" else float(labels["le"])
            buckets.setdefault(deployment, []).append((bound, int(value)))
    return {
        name: SlotCounters(requests.get(name, 0), errors.get(name, 0), tuple(sorted(buckets.get(name, []))))
        for name in sorted(set(requests) | set(buckets))
    }


def read_counters(status: EndpointStatus, key: str) -> dict[str, SlotCounters]:
    """The counters of the endpoint's router, asked with the endpoint's key; BackendError when
    its router is not running or does not answer now."""
    import requests

    router = status.details.get("router")
    if not status.exists or not status.scoring_uri or not router or router.get("state") != "running":
        raise BackendError(f"the router of endpoint '{status.name}' is not running")
    metrics_url = status.scoring_uri.rsplit("/", 1)[0] + "/metrics"
    try:
        response = requests.get(
            metrics_url, headers={"Authorization": f"Bearer {key}"}, timeout=METRICS_TIMEOUT_S
        )
    except requests.RequestException as exc:
        raise BackendError(
            f"the router of endpoint '{status.name}' did not answer GET /metrics: {exc}"
        ) from None
    if response.status_code != 200:
        raise BackendError(f"GET /metrics answered {response.status_code}")
    return parse_prometheus(response.text)
