"""Azure Monitor's metrics API (``GET {resource}/providers/Microsoft.Insights/metrics``) for a
managed online endpoint, as an azure-core transport: the real MetricsQueryClient talks to it.

It answers in the shape of azure-monitor-query's own recorded traffic against live Azure
(github.com/Azure/azure-sdk-assets, python/sdk/monitor/azure-monitor-query/tests/recordings/
test_metrics_query_client.pyTestMetricsQueryClienttest_metrics_filter.json): ``cost``,
``timespan``, ``interval``, ``value[]`` with the metric's ``id`` (the resource id followed by
``/providers/Microsoft.Insights/metrics/<name>``), ``name.value``/``localizedValue``, ``unit``,
``timeseries[].metadatavalues`` (dimension names in lower case, as Azure returns them) and
``data[].timeStamp`` per interval with the asked aggregation (a zero count is sent, a minute
without latency has no value), ``errorCode: Success``, then ``namespace`` and
``resourceregion``. It answers from a table of per-minute traffic per deployment and says no
as Azure does: an unknown metric name, an aggregation the metric does not support, a
dimension the metric does not have, an endpoint that does not exist, a missing token or
api-version get a 400/401/404 with Azure's error body.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

# From the Azure Monitor supported-metrics reference of
# Microsoft.MachineLearningServices/workspaces/onlineEndpoints (names, units, dimensions, PT1M
# grain); the reference lists the default aggregation, Average, and counts also take Total.
METRICS = {
    "RequestsPerMinute": {
        "unit": "Count",
        "aggregations": {"Average", "Minimum", "Maximum", "Total", "Count"},
        "dimensions": {"deployment", "statusCode", "statusCodeClass", "modelStatusCode"},
    },
    **{
        f"RequestLatency_{q}": {
            "unit": "Milliseconds",
            "aggregations": {"Average"},
            "dimensions": {"deployment"},
        }
        for q in ("P50", "P90", "P95", "P99")
    },
}


class Minute:
    """One deployment's minute: requests by status class and latency quantiles (ms)."""

    def __init__(
        self,
        ok: int,
        errors: int = 0,
        p50: float = 20.0,
        p90: float = 30.0,
        p95: float = 35.0,
        p99: float = 50.0,
    ):
        self.ok, self.errors = ok, errors
        self.latency = {"P50": p50, "P90": p90, "P95": p95, "P99": p99}


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", 2_000_000_000)


class FakeMonitor(HttpTransport):
    """``traffic(deployment, minute_start) -> Minute | None``: what Azure Monitor has recorded."""

    def __init__(
        self,
        traffic: Callable[[str, dt.datetime], Minute | None],
        deployments: list[str],
        exists: Callable[[str], bool] | None = None,
    ):
        self.traffic = traffic
        self.deployments = deployments
        #: ``exists(endpoint_name)``: whether the workspace has that endpoint (default: any)
        self.exists = exists or (lambda endpoint: True)
        self.queries: list[dict[str, str]] = []

    def __enter__(self) -> FakeMonitor:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: HttpRequest, **kwargs: Any) -> Any:
        from azure.core.rest._requests_basic import RestRequestsTransportResponse
        from requests import Response

        status, body = self._answer(request)
        response = Response()
        response.status_code = status
        response.raw = io.BytesIO(json.dumps(body).encode())
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        response.url = request.url
        return RestRequestsTransportResponse(request=request, internal_response=response)

    def _answer(self, request: HttpRequest) -> tuple[int, dict[str, Any]]:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return 401, _error(
                "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        url = urllib.parse.urlsplit(request.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.queries.append(query)
        if (
            not url.path.endswith("/providers/Microsoft.Insights/metrics")
            or "onlineEndpoints/" not in url.path
        ):
            return 404, _error("ResourceNotFound", f"no such resource {url.path}")
        resource = url.path[: -len("/providers/Microsoft.Insights/metrics")]
        endpoint = urllib.parse.unquote(resource.rsplit("/", 1)[-1])
        if not self.exists(endpoint):
            return 404, _error(
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/onlineEndpoints/{endpoint}'"
                " was not found.",
            )
        if "api-version" not in query:
            return 400, _error("MissingApiVersionParameter", "The api-version query parameter is required.")
        names = query.get("metricnames", "").split(",")
        aggregation = query.get("aggregation", "Average")
        for name in names:
            if name not in METRICS:
                valid = ", ".join(METRICS)
                return 400, _error(
                    "BadRequest",
                    "Failed to find metric configuration for provider: Microsoft.MachineLearningServices,"
                    f" resource Type: workspaces/onlineEndpoints, metric: {name}, Valid metrics: {valid}",
                )
            if aggregation not in METRICS[name]["aggregations"]:
                return 400, _error("BadRequest", f"Aggregation {aggregation} is not supported by {name}")
        split_by = re.findall(r"(\w+) eq '\*'", query.get("$filter", ""))
        for name in names:
            unknown = [d for d in split_by if d not in METRICS[name]["dimensions"]]
            if unknown:
                return 400, _error("BadRequest", f"Metric {name} has no dimension {unknown[0]}")
        start_text, end_text = query["timespan"].split("/")
        start, end = _parse(start_text), _parse(end_text)
        minutes = []
        t = start.replace(second=0, microsecond=0)
        while t + dt.timedelta(minutes=1) <= end:
            if t >= start:
                minutes.append(t)
            t += dt.timedelta(minutes=1)
        value = [self._metric(resource, name, aggregation, split_by, minutes) for name in names]
        return 200, {
            "cost": len(minutes),
            "timespan": query["timespan"],
            "interval": query.get("interval", "PT1M"),
            "value": value,
            "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "resourceregion": "westeurope",
        }

    def _metric(
        self, resource: str, name: str, aggregation: str, split_by: list[str], minutes: list[dt.datetime]
    ) -> dict:
        key = aggregation.lower()
        timeseries = []
        for deployment in self.deployments:
            recorded = [(m, self.traffic(deployment, m)) for m in minutes]
            if name == "RequestsPerMinute":
                classes = ("2xx", "5xx") if "statusCodeClass" in split_by else (None,)
                for cls in classes:
                    data = []
                    for m, minute in recorded:
                        count = 0 if minute is None else (minute.ok if cls == "2xx" else minute.errors)
                        if cls is None and minute is not None:
                            count = minute.ok + minute.errors
                        data.append({"timeStamp": _iso(m), key: float(count)})
                    labels = [
                        {"name": {"value": "deployment", "localizedValue": "deployment"}, "value": deployment}
                    ]
                    if cls is not None:
                        labels.append(
                            {
                                "name": {"value": "statuscodeclass", "localizedValue": "statusCodeClass"},
                                "value": cls,
                            }
                        )
                    timeseries.append({"metadatavalues": labels, "data": data})
            else:
                quantile = name.split("_")[1]
                data = [
                    {
                        "timeStamp": _iso(m),
                        **({key: minute.latency[quantile]} if minute and minute.ok + minute.errors else {}),
                    }
                    for m, minute in recorded
                ]
                timeseries.append(
                    {
                        "metadatavalues": [
                            {
                                "name": {"value": "deployment", "localizedValue": "deployment"},
                                "value": deployment,
                            }
                        ],
                        "data": data,
                    }
                )
        return {
            "id": f"{resource}/providers/Microsoft.Insights/metrics/{name}",
            "type": "Microsoft.Insights/metrics",
            "name": {"value": name, "localizedValue": name.replace("_", " ")},
            "displayDescription": "",
            "unit": METRICS[name]["unit"],
            "timeseries": timeseries,
            "errorCode": "Success",
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _parse(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
