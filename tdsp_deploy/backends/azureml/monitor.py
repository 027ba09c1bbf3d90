"""The live metrics of a managed online endpoint's deployments, from Azure Monitor: the seam
a staged rollout reads them through on the Azure ML target.

Azure Monitor keeps, per minute and per deployment (the ``deployment`` dimension of the
``Microsoft.MachineLearningServices/workspaces/onlineEndpoints`` resource):
``RequestsPerMinute`` (split by ``statusCodeClass``: 2xx, 4xx, 5xx) and
``RequestLatency_P50/P90/P95/P99`` (milliseconds, one value a minute). They are read with
Microsoft's own client library (azure-monitor-query's ``MetricsQueryClient``), which tests
run against a fake HTTP transport answering as Azure Monitor does; every error it raises is
translated here into ``tdsp_deploy.errors``. azure-monitor-query is imported inside
``connect`` only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tdsp_deploy.errors import BackendError

REQUESTS = "RequestsPerMinute"
LATENCY = {
    "p50": "RequestLatency_P50",
    "p90": "RequestLatency_P90",
    "p95": "RequestLatency_P95",
    "p99": "RequestLatency_P99",
}
MINUTE = dt.timedelta(minutes=1)


@dataclasses.dataclass
class DeploymentMinutes:
    """One deployment's minutes in a time span: request and error (5xx) counts, and each
    minute's latency quantiles (minutes without requests have none)."""

    requests: int = 0
    errors: int = 0
    quantiles: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {q: [] for q in LATENCY})


def endpoint_resource_id(subscription_id: str, resource_group: str, workspace: str, endpoint: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}"
    )


class EndpointMetrics:
    """Reads one endpoint's per-deployment metrics. ``client`` is a MetricsQueryClient (or
    anything with its ``query_resource``)."""

    def __init__(self, client: Any, resource_id: str):
        self.client = client
        self.resource_id = resource_id

    @classmethod
    def connect(
        cls, target: Any, endpoint: str, *, credential: Any = None, **client_options: Any
    ) -> EndpointMetrics:
        """A reader for the manifest's workspace; ``client_options`` go to the client (a test's
        ``transport``)."""
        from azure.monitor.query import MetricsQueryClient

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        resource = endpoint_resource_id(
            target.subscription_id, target.resource_group, target.workspace, endpoint
        )
        return cls(MetricsQueryClient(credential, **client_options), resource)

    def read(self, start: dt.datetime, end: dt.datetime) -> dict[str, DeploymentMinutes]:
        """Every deployment's whole minutes from ``start`` to ``end`` (UTC)."""
        found: dict[str, DeploymentMinutes] = {}
        counts = self._query([REQUESTS], "Total", "deployment eq '*' and statusCodeClass eq '*'", start, end)
        for metric in counts.metrics:
            for series in metric.timeseries:
                labels = {k.lower(): v for k, v in (series.metadata_values or {}).items()}
                minutes = found.setdefault(str(labels.get("deployment")), DeploymentMinutes())
                total = int(sum(point.total or 0 for point in series.data))
                minutes.requests += total
                if str(labels.get("statuscodeclass", "")).lower() == "5xx":
                    minutes.errors += total
        latency = self._query(list(LATENCY.values()), "Average", "deployment eq '*'", start, end)
        names = {value: key for key, value in LATENCY.items()}
        for metric in latency.metrics:
            quantile = names.get(metric.name)
            if quantile is None:
                continue
            for series in metric.timeseries:
                labels = {k.lower(): v for k, v in (series.metadata_values or {}).items()}
                minutes = found.setdefault(str(labels.get("deployment")), DeploymentMinutes())
                minutes.quantiles[quantile] += [p.average for p in series.data if p.average is not None]
        return found

    def _query(
        self, names: list[str], aggregation: str, where: str, start: dt.datetime, end: dt.datetime
    ) -> Any:
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        try:
            return self.client.query_resource(
                self.resource_id,
                metric_names=names,
                timespan=(start, end),
                granularity=MINUTE,
                aggregations=[aggregation],
                filter=where,
            )
        except ClientAuthenticationError as exc:
            raise BackendError(
                f"Azure Monitor refused the credentials: {exc.message}",
                hint="sign in with `az login`; reading metrics needs the Monitoring Reader role"
                " on the endpoint",
            ) from exc
        except HttpResponseError as exc:
            raise BackendError(
                f"Azure Monitor refused the metrics query ({exc.status_code}): {exc.message}",
                hint="check that the endpoint exists and that its metrics are enabled",
            ) from exc
        except AzureError as exc:
            raise BackendError(f"Azure Monitor could not be reached: {exc}") from exc
