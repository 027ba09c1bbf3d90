"""An Azure ML workspace as Azure Resource Manager answers for it, behind ``HandlerTransport``.

Every answer follows the recorded traffic of azure-ai-ml's own end-to-end tests against live
Azure (github.com/Azure/azure-sdk-assets, python/sdk/ml/azure-ai-ml/tests/recordings/
online_services/e2etests/), named per handler:

- DEPLOY_CREATE: test_online_deployment.pyTestOnlineDeploymenttest_online_deployment_create.json
- ENDPOINT_E2E: test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e.json

State is kept (endpoints, deployments, assets, operations). A long-running operation answers
``201``/``202`` with ``Azure-AsyncOperation`` and ``Location`` and is ``Updating`` on its
status URL for ``polls`` reads, then ``Succeeded`` (or what the test scripted). A request this
workspace does not know is recorded in ``unknown`` and raises: it would be a guess about
Azure's API, and the test fails.

``retry_after_ms`` (a test setting) is sent as ``retry-after-ms`` on operation-status answers,
which azure-core's poller honours, so the SDK's 5 s poll is shortened without replacing its
poller; left at None, the header is absent as in the recordings.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.arm.assets import AssetsMixin, arm_error
from tests.fakes.arm.transport import HandlerTransport, Reply, Sent

PROVIDER = "Microsoft.MachineLearningServices"
ARM = "https://management.azure.com"
STARTED = "2025-02-27T10:35:40.9824177+00:00"
NOT_ENDED = "0001-01-01T00:00:00+00:00"  # DEPLOY_CREATE: endTime of an operation still running


class UnknownRequest(AssertionError):
    """The backend sent something this workspace does not know Azure to answer."""


@dataclasses.dataclass
class Operation:
    id: str
    kind: str  # "endpoint" | "deployment"
    endpoint: str
    deployment: str | None
    action: str  # "create" | "update" | "delete"
    polls: int
    outcome: str = "Succeeded"  # or "Failed", or "Never" (never ends)
    error: dict[str, Any] | None = None
    status: str = "Updating"
    started: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class Scripted:
    """A test's instruction: answer the next matching request(s) with ``reply``."""

    method: str
    pattern: str  # regular expression on the path below the workspace
    reply: Reply | Callable[[Sent], Reply]
    times: int = 1


class Workspace(AssetsMixin):
    def __init__(
        self,
        *,
        subscription: str,
        resource_group: str,
        name: str,
        storage_account: str,
        container: str,
        account_key: str,
        location: str = "eastus",
        polls: int = 2,
        retry_after_ms: int | None = 20,
        scoring_uri: Callable[[str], str] | None = None,
        upload_container: Callable[[str], str] | None = None,
        duration_s: float | None = None,
    ):
        self.subscription = subscription
        self.resource_group = resource_group
        self.name = name
        self.location = location
        self.storage_account = storage_account
        self.container = container
        self.account_key = account_key
        self.polls = polls
        #: when set, an operation takes this long (wall clock) instead of ``polls`` reads
        self.duration_s = duration_s
        self.retry_after_ms = retry_after_ms
        self.scoring_uri = scoring_uri or (lambda e: f"https://{e}.{location}.inference.ml.azure.com/score")
        #: makes a container for a code upload; returns a SAS URI for it
        self.upload_container = upload_container
        self.upload_containers: list[str] = []
        self.workspace_id = "5881e5dc-6e3e-408e-b99e-754026b4a07b"
        self.base = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{PROVIDER}"
            f"/workspaces/{name}"
        )
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.keys: dict[str, dict[str, str]] = {}
        #: what POST .../token answers for an endpoint whose authMode is a token mode
        self.token = f"aml-token-{uuid.uuid4().hex}"
        self.logs: dict[tuple[str, str, str], str] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.environments: dict[tuple[str, str], dict[str, Any]] = {}
        self.codes: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.sent: list[Sent] = []
        self.unknown: list[str] = []
        self.scripted: list[Scripted] = []
        #: what the next deployment operation ends with (outcome, error), for failure tests
        self.next_deployment_outcome: tuple[str, dict[str, Any] | None] = ("Succeeded", None)
        self._lock = threading.Lock()
        self.transport = HandlerTransport(self.handle)

    # -- the transport's handler -----------------------------------------------------------
    def handle(self, sent: Sent) -> Reply:
        with self._lock:
            self.sent.append(sent)
            for i, script in enumerate(self.scripted):
                below = sent.path[len(self.base) :] if sent.path.startswith(self.base) else sent.path
                if script.method == sent.method and re.fullmatch(script.pattern, below):
                    script.times -= 1
                    if script.times <= 0:
                        del self.scripted[i]
                    return script.reply(sent) if callable(script.reply) else script.reply
            reply = self._route(sent)
        if reply is None:
            self.unknown.append(f"{sent.method} {sent.path}?{sent.query}")
            raise UnknownRequest(
                f"the emulated workspace does not know {sent.method} {sent.path}?{sent.query}"
            )
        return reply

    def script(
        self, method: str, pattern: str, reply: Reply | Callable[[Sent], Reply], times: int = 1
    ) -> None:
        self.scripted.append(Scripted(method, pattern, reply, times))

    def _route(self, sent: Sent) -> Reply | None:
        path = sent.path
        status = re.fullmatch(
            rf"/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}"
            r"/(mfeOperationsStatus|mfeOperationResults)/([^/]+)",
            path,
        )
        if status and sent.method == "GET":
            return self._operation(status.group(2), result=status.group(1) == "mfeOperationResults")
        if not path.startswith(self.base):
            return None
        rest = path[len(self.base) :]
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, rest)
            if match and method == sent.method:
                return handler(sent, *match.groups())
        return None

    def _routes(self) -> list[tuple[str, str, Callable[..., Reply]]]:
        name = r"([^/]+)"
        return [
            ("GET", r"", self._get_workspace),
            ("GET", rf"/onlineEndpoints/{name}", self._get_endpoint),
            ("PUT", rf"/onlineEndpoints/{name}", self._put_endpoint),
            ("DELETE", rf"/onlineEndpoints/{name}", self._delete_endpoint),
            ("POST", rf"/onlineEndpoints/{name}/listKeys", self._list_keys),
            ("POST", rf"/onlineEndpoints/{name}/token", self._token),
            ("GET", rf"/onlineEndpoints/{name}/deployments", self._list_deployments),
            ("GET", rf"/onlineEndpoints/{name}/deployments/{name}", self._get_deployment),
            ("PUT", rf"/onlineEndpoints/{name}/deployments/{name}", self._put_deployment),
            ("DELETE", rf"/onlineEndpoints/{name}/deployments/{name}", self._delete_deployment),
            ("POST", rf"/onlineEndpoints/{name}/deployments/{name}/getLogs", self._get_logs),
            ("GET", rf"/models/{name}/versions", self._asset_list(self.models)),
            ("GET", rf"/models/{name}/versions/{name}", self._asset_get(self.models, "model")),
            ("PUT", rf"/models/{name}/versions/{name}", self._asset_put(self.models, "models")),
            ("GET", rf"/environments/{name}/versions", self._asset_list(self.environments)),
            (
                "GET",
                rf"/environments/{name}/versions/{name}",
                self._asset_get(self.environments, "environment"),
            ),
            (
                "PUT",
                rf"/environments/{name}/versions/{name}",
                self._asset_put(self.environments, "environments"),
            ),
            ("GET", rf"/codes/{name}/versions", self._list_codes),
            ("GET", rf"/codes/{name}/versions/{name}", self._asset_get(self.codes, "code")),
            ("PUT", rf"/codes/{name}/versions/{name}", self._asset_put(self.codes, "codes")),
            ("POST", rf"/codes/{name}/versions/{name}/startPendingUpload", self._start_pending_upload),
            ("GET", r"/datastores", self._list_datastores),
            ("GET", rf"/datastores/{name}", self._get_datastore),
            ("POST", rf"/datastores/{name}/listSecrets", self._list_secrets),
        ]

    # -- operations ----------------------------------------------------------------------------
    def _start(
        self,
        kind: str,
        endpoint: str,
        deployment: str | None,
        action: str,
        outcome: str = "Succeeded",
        error: dict[str, Any] | None = None,
    ) -> Operation:
        prefix = "oeidp" if kind == "endpoint" else "odidp"
        op = Operation(
            f"{prefix}:{self.workspace_id}:{uuid.uuid4()}",
            kind,
            endpoint,
            deployment,
            action,
            self.polls,
            outcome,
            error,
        )
        self.operations[op.id] = op
        return op

    def _op_headers(self, op: Operation, resource_path: str, *, delete: bool, api: str) -> dict[str, str]:
        # the operation's URLs carry the api-version of the request that started it (DEPLOY_CREATE)
        status_url = f"{ARM}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}"
        headers = {
            "Azure-AsyncOperation": f"{status_url}/mfeOperationsStatus/{op.id}?api-version={api}",
            "x-ms-async-operation-timeout": "PT30M",
        }
        # a delete's Location is the operation's result; a PUT's is the resource (ENDPOINT_E2E)
        headers["Location"] = (
            f"{status_url}/mfeOperationResults/{op.id}?api-version={api}"
            if delete
            else f"{ARM}{resource_path}?api-version={api}"
        )
        return headers

    def _operation(self, op_id: str, *, result: bool) -> Reply:
        op = self.operations.get(op_id)
        if op is None:
            return arm_error(404, "UserError", f"Operation {op_id} not found.")
        self._advance(op)
        headers = {"retry-after-ms": str(self.retry_after_ms)} if self.retry_after_ms is not None else {}
        if result:  # mfeOperationResults: 202 while running, then 200 with no body
            return Reply(202 if op.status == "Updating" else 200, None, headers)
        # DEPLOY_CREATE: the operation status body while running and once done
        body: dict[str, Any] = {
            "id": f"/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}"
            f"/mfeOperationsStatus/{op.id}",
            "name": op.id,
            "status": op.status,
            "startTime": STARTED,
            "endTime": NOT_ENDED if op.status == "Updating" else "2025-02-27T10:36:31.4310427+00:00",
            "percentComplete": 0.0,
        }
        if op.status == "Failed" and op.error:
            body["error"] = op.error
        return Reply(200, body, headers)

    def _advance(self, op: Operation) -> None:
        """Time passes for a running operation: one poll, or (with ``duration_s``) the clock."""
        if op.status != "Updating" or op.outcome == "Never":
            return
        if self.duration_s is not None:
            if time.monotonic() - op.started >= self.duration_s:
                self._finish(op)
            return
        op.polls -= 1
        if op.polls < 0:
            self._finish(op)

    def _tick(self, endpoint: str) -> None:
        """A read of an endpoint or its deployments: Azure's operations run whether or not
        anyone polls their status URL."""
        for op in list(self.operations.values()):
            if op.endpoint == endpoint:
                self._advance(op)

    def _finish(self, op: Operation) -> None:
        op.status = op.outcome
        key = (op.endpoint, op.deployment or "")
        if op.kind == "endpoint":
            endpoint = self.endpoints.get(op.endpoint)
            if op.action == "delete":
                self.endpoints.pop(op.endpoint, None)
                for k in [k for k in self.deployments if k[0] == op.endpoint]:
                    del self.deployments[k]
            elif endpoint is not None:
                endpoint["properties"]["provisioningState"] = op.outcome
                endpoint["properties"]["scoringUri"] = self.scoring_uri(op.endpoint)
            return
        deployment = self.deployments.get(key)
        if op.action == "delete":
            self.deployments.pop(key, None)
        elif deployment is not None:
            deployment["properties"]["provisioningState"] = op.outcome

    def begin_elsewhere(
        self,
        kind: str,
        endpoint: str,
        deployment: str | None,
        action: str,
        outcome: str = "Succeeded",
        polls: int | None = None,
    ) -> Operation:
        """An operation someone else started (another user, the portal): the resource shows it."""
        op = self._start(kind, endpoint, deployment, action, outcome)
        if polls is not None:
            op.polls = polls
        state = "Deleting" if action == "delete" else "Updating"
        if kind == "endpoint":
            self.endpoints[endpoint]["properties"]["provisioningState"] = state
        else:
            self.deployments[(endpoint, deployment or "")]["properties"]["provisioningState"] = state
        return op

    def close(self) -> None:
        """End every operation still running (as canceled), so no poller thread of the SDK
        keeps polling after the test."""
        with self._lock:
            for op in self.operations.values():
                if op.status == "Updating":
                    op.status = "Canceled"

    def create_endpoint_elsewhere(self, name: str, polls: int) -> Operation:
        """An endpoint another command is still creating: its PUT was answered, its operation
        runs for ``polls`` reads."""
        body = {
            "location": self.location,
            "properties": {"authMode": "Key", "traffic": {}, "mirrorTraffic": {}},
        }
        path = f"{self.base}/onlineEndpoints/{name}"
        self._put_endpoint(
            Sent("PUT", ARM + path, path, "api-version=2022-02-01-preview", {}, json.dumps(body).encode()),
            name,
        )
        op = list(self.operations.values())[-1]
        op.polls = polls
        return op

    def busy(self, endpoint: str) -> Operation | None:
        """The unfinished operation on an endpoint or one of its deployments, if any."""
        for op in self.operations.values():
            if op.endpoint == endpoint and op.status == "Updating":
                return op
        return None

    def _conflict(self, endpoint: str) -> Reply | None:
        op = self.busy(endpoint)
        if op is None:
            return None
        what = f"deployment {op.deployment}" if op.deployment else f"endpoint {endpoint}"
        # Azure refuses a second change while one runs (409, UserError)
        return arm_error(
            409,
            "UserError",
            f"Conflict: an operation is already in progress on {what}. Wait for it to finish and try again.",
        )

    # -- endpoints -------------------------------------------------------------------------
    def _not_found(self, what: str) -> Reply:
        return arm_error(404, "UserError", f"Not found: {what}")

    def _get_endpoint(self, sent: Sent, name: str) -> Reply:
        self._tick(name)
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return self._not_found(f"online endpoint {name}")
        return Reply(200, endpoint)

    def _put_endpoint(self, sent: Sent, name: str) -> Reply:
        body = sent.json()
        props = body.get("properties", {})
        existing = self.endpoints.get(name)
        if existing is not None:
            if existing["properties"]["provisioningState"] == "Deleting":
                return arm_error(409, "UserError", f"Endpoint {name} is being deleted.")
            conflict = self._conflict(name)
            if conflict:
                return conflict
        traffic = props.get("traffic") or {}
        mirror = props.get("mirrorTraffic") or {}
        for deployment in list(traffic) + list(mirror):
            if (name, deployment) not in self.deployments:
                return arm_error(
                    400, "BadArgument", f"Deployment {deployment} does not exist on endpoint {name}."
                )
        if existing is None and any(traffic.values()):
            return arm_error(400, "BadArgument", "Traffic cannot be set when an endpoint is created.")
        if sum(traffic.values()) not in (0, 100):
            return arm_error(400, "BadArgument", "Traffic rules must add up to 0 or 100.")
        op = self._start("endpoint", name, None, "update" if existing else "create")
        path = f"{self.base}/onlineEndpoints/{name}"
        # DEPLOY_CREATE / ENDPOINT_E2E: the endpoint as the PUT answers it (Creating, no scoringUri)
        resource = {
            "id": path,
            "name": name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints",
            "properties": {
                "description": props.get("description"),
                "properties": {"azureml.onlineendpointid": path.lower()},
                "scoringUri": existing["properties"]["scoringUri"] if existing else None,
                "swaggerUri": None,
                "authMode": props.get("authMode", "Key"),
                "provisioningState": "Updating" if existing else "Creating",
                "compute": None,
                "traffic": traffic,
                "mirrorTraffic": mirror,
                "publicNetworkAccess": props.get("publicNetworkAccess", "Enabled"),
            },
            "systemData": {"createdAt": STARTED, "createdBy": "Sanitized", "lastModifiedAt": STARTED},
            # ENDPOINT_E2E: the PUT body's top-level tags come back whole (a PUT replaces them)
            "tags": body.get("tags") or {},
            "location": self.location,
            "kind": "Managed",
            "identity": {"type": "SystemAssigned", "principalId": "0" * 8, "tenantId": "0" * 8},
        }
        self.endpoints[name] = resource
        self.keys.setdefault(
            name, {"primaryKey": f"pk-{uuid.uuid4().hex}", "secondaryKey": f"sk-{uuid.uuid4().hex}"}
        )
        return Reply(
            200 if existing else 201, resource, self._op_headers(op, path, delete=False, api=_api(sent))
        )

    def _delete_endpoint(self, sent: Sent, name: str) -> Reply:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return Reply(204)
        conflict = self._conflict(name)
        if conflict:
            return conflict
        endpoint["properties"]["provisioningState"] = "Deleting"
        op = self._start("endpoint", name, None, "delete")
        # ENDPOINT_E2E: 202, body "null", Azure-AsyncOperation + Location (mfeOperationResults)
        return Reply(202, None, self._op_headers(op, "", delete=True, api=_api(sent)))

    def _list_keys(self, sent: Sent, name: str) -> Reply:
        if name not in self.endpoints:
            return self._not_found(f"online endpoint {name}")
        return Reply(200, self.keys[name])

    def _token(self, sent: Sent, name: str) -> Reply:
        # ENDPOINT_E2E: POST .../token on an AMLToken endpoint
        if name not in self.endpoints:
            return self._not_found(f"online endpoint {name}")
        return Reply(
            200,
            {
                "accessToken": self.token,
                "tokenType": "Bearer",
                "expiryTimeUtc": 1772655481,
                "refreshAfterTimeUtc": 1772612312,
            },
        )

    # -- deployments -------------------------------------------------------------------------
    def _list_deployments(self, sent: Sent, endpoint: str) -> Reply:
        self._tick(endpoint)
        if endpoint not in self.endpoints:
            return self._not_found(f"online endpoint {endpoint}")
        return Reply(200, {"value": [d for (e, _), d in sorted(self.deployments.items()) if e == endpoint]})

    def _get_deployment(self, sent: Sent, endpoint: str, name: str) -> Reply:
        self._tick(endpoint)
        deployment = self.deployments.get((endpoint, name))
        if deployment is None:
            return self._not_found(f"deployment {name} of online endpoint {endpoint}")
        return Reply(200, deployment)

    def _put_deployment(self, sent: Sent, endpoint: str, name: str) -> Reply:
        ep = self.endpoints.get(endpoint)
        if ep is None:
            return self._not_found(f"online endpoint {endpoint}")
        state = ep["properties"]["provisioningState"]
        if state in ("Deleting", "Failed"):
            return arm_error(400, "BadArgument", f"Endpoint {endpoint} is in {state} state.")
        conflict = self._conflict(endpoint)
        if conflict:
            return conflict
        body = sent.json()
        props = body.get("properties", {})
        for field, store, kind in (
            ("model", self.models, "models"),
            ("environmentId", self.environments, "environments"),
        ):
            ref = props.get(field)
            if ref and not self._exists(ref, store, kind):
                return self._not_found(f"{kind[:-1]} {ref}")
        code = (props.get("codeConfiguration") or {}).get("codeId")
        if code and not self._exists(code, self.codes, "codes"):
            return self._not_found(f"code {code}")
        existing = self.deployments.get((endpoint, name))
        outcome, error = self.next_deployment_outcome
        self.next_deployment_outcome = ("Succeeded", None)
        op = self._start("deployment", endpoint, name, "update" if existing else "create", outcome, error)
        path = f"{self.base}/onlineEndpoints/{endpoint}/deployments/{name}"
        # DEPLOY_CREATE: the deployment as the PUT answers it (Creating, Azure's defaults filled in)
        resource = {
            "id": path,
            "name": name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
            "properties": {
                "description": props.get("description"),
                "properties": dict(props.get("properties") or {}),
                "codeConfiguration": props.get("codeConfiguration"),
                "environmentId": props.get("environmentId"),
                "environmentVariables": props.get("environmentVariables") or {},
                "scaleSettings": {"scaleType": "Default"},
                "requestSettings": props.get("requestSettings")
                or {"maxQueueWait": "PT0S", "requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1},
                "modelMountPath": None,
                "appInsightsEnabled": props.get("appInsightsEnabled", False),
                "livenessProbe": props.get("livenessProbe") or _DEFAULT_PROBE,
                "readinessProbe": props.get("readinessProbe") or _DEFAULT_PROBE,
                "provisioningState": "Updating" if existing else "Creating",
                "instanceType": props.get("instanceType"),
                "model": props.get("model"),
                "egressPublicNetworkAccess": props.get("egressPublicNetworkAccess", "Enabled"),
                "dataCollector": None,
                "endpointComputeType": "Managed",
            },
            "systemData": {"createdAt": STARTED, "createdBy": "Sanitized", "lastModifiedAt": STARTED},
            "tags": body.get("tags") or {},
            "location": self.location,
            "kind": "Managed",
            "sku": {
                "name": "Default",
                "tier": "Standard",
                "capacity": (body.get("sku") or {}).get("capacity", 1),
            },
        }
        self.deployments[(endpoint, name)] = resource
        return Reply(
            200 if existing else 201, resource, self._op_headers(op, path, delete=False, api=_api(sent))
        )

    def _delete_deployment(self, sent: Sent, endpoint: str, name: str) -> Reply:
        deployment = self.deployments.get((endpoint, name))
        if deployment is None:
            return self._not_found(f"deployment {name} of online endpoint {endpoint}")
        conflict = self._conflict(endpoint)
        if conflict:
            return conflict
        ep = self.endpoints[endpoint]["properties"]
        if (ep.get("traffic") or {}).get(name) or (ep.get("mirrorTraffic") or {}).get(name):
            return arm_error(
                400, "BadArgument", f"Deployment {name} has traffic; set it to 0 before deleting."
            )
        deployment["properties"]["provisioningState"] = "Deleting"
        op = self._start("deployment", endpoint, name, "delete")
        return Reply(202, None, self._op_headers(op, "", delete=True, api=_api(sent)))

    def _get_logs(self, sent: Sent, endpoint: str, name: str) -> Reply:
        if (endpoint, name) not in self.deployments:
            return self._not_found(f"deployment {name} of online endpoint {endpoint}")
        request = sent.json() or {}
        container = request.get("containerType", "InferenceServer")
        text = self.logs.get((endpoint, name, container), "")
        tail = request.get("tail")
        if tail:
            text = "\n".join(text.splitlines()[-int(tail) :])
        return Reply(200, {"content": text})


_DEFAULT_PROBE = {
    "failureThreshold": 30,
    "successThreshold": 1,
    "timeout": "PT2S",
    "period": "PT10S",
    "initialDelay": "PT10S",
}


def _api(sent: Sent) -> str:
    return parse_qs(sent.query).get("api-version", ["2023-04-01-preview"])[0]
