"""An Azure ML workspace in memory, standing at the ``AzureMLClient`` seam.

It has the client's public methods and keeps endpoints, deployments, models and environments
as Azure ML would, enforcing the platform's documented rules so that it can say no:

- traffic adds up to 0 or 100 and goes only to existing deployments; none at endpoint creation;
- mirror traffic: at most 50%, one deployment, which takes no live traffic;
- a deployment with live or mirrored traffic cannot be deleted;
- a model version is immutable: registering it again with other content is refused;
- an endpoint or deployment with an operation running refuses another write (409);
- a traffic write must name every deployment that has a share now (the seam's own contract).

Refusals are built as the Azure SDK raises them (azure-core ``HttpResponseError`` with the
service's error code) and go through the client's own ``translate_error``, so the backend
meets exactly the errors the real seam raises. Operations finish after ``polls`` polls.
Failures are injected per deployment name: ``quota`` (refused on submission), ``probe_failure``
(the next revision's operation fails with ResourceNotReady, its inference-server log says why) and
``never_finishes`` (the operation never ends: the backend's deadline must fire).

``serve()`` starts the data plane: a real HTTP server on loopback at the scoring URI, checking
the bearer key, routing by the ``azureml-model-deployment`` header or by traffic weight, and
refusing more than 2 x max_concurrent_requests_per_instance x instance_count requests at once
with 429, as Azure ML does.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.server
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.azureml.client import LOG_CONTAINERS
from tdsp_deploy.backends.azureml.operations import provisioning_summary, wait_for
from tdsp_deploy.backends.azureml.records import DeploymentInfo, EndpointInfo
from tdsp_deploy.backends.azureml.translate import (
    Doing,
    model_version_conflict,
    share_dropped,
    translate_error,
)
from tdsp_deploy.errors import TdspError
from tests.fakes.arm.scoring import scoring_handler

PIN_HEADER = "azureml-model-deployment"
BUSY = frozenset({"Creating", "Updating", "Deleting"})
# what a deployment answers when the test does not say otherwise
Answer = Callable[[bytes], tuple[int, dict[str, str], bytes]]


# -- Azure's errors, as the SDK raises them ----------------------------------------------------
class _Response:
    """Enough of an azure-core HTTP response for HttpResponseError to read the error body."""

    def __init__(self, status: int, code: str, message: str):
        self.status_code = status
        self.reason = {400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(status, "Error")
        self._body = json.dumps({"error": {"code": code, "message": message}})
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return self._body


def azure_error(status: int, code: str, message: str) -> Exception:
    """The exception azure-core raises for this service answer."""
    from azure.core import exceptions as core

    cls = {404: core.ResourceNotFoundError, 409: core.ResourceExistsError}.get(status, core.HttpResponseError)
    return cls(response=_Response(status, code, message))


def refuse(status: int, code: str, message: str, doing: Doing) -> TdspError:
    """Our error for the service's answer: what the real seam would raise."""
    translated = translate_error(azure_error(status, code, message), doing)
    assert translated is not None
    return translated


# -- long-running operations -----------------------------------------------------------------
class FakeOperation:
    """An LROPoller that ends after ``polls`` calls of ``wait`` (or never)."""

    def __init__(
        self,
        polls: int,
        finish: Callable[[], Any],
        *,
        never: bool = False,
        on_poll: Callable[[], None] | None = None,
    ):
        self._left = max(1, polls)
        self._finish = finish
        self._never = never
        self._on_poll = on_poll
        self._done = False
        self._value: Any = None
        self._error: TdspError | None = None
        self.polls = 0

    def result(self, timeout: float | None = None) -> Any:
        # an LROPoller asked for its result before it is done parses the operation's status
        # document as the resource: the caller must wait first
        assert self._done, "result() of an operation that is not done"
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout: float | None = None) -> None:
        if self._done:
            if self._error is not None:
                raise self._error
            return
        self.polls += 1
        if self._on_poll is not None:
            self._on_poll()
        if self._never:
            time.sleep(min(timeout or 0.0, 0.01))
            return
        self._left -= 1
        if self._left > 0:
            return
        self._done = True
        try:
            self._value = self._finish()
        except TdspError as error:
            self._error = error
            raise

    def done(self) -> bool:
        return self._done

    def status(self) -> str:
        if not self._done:
            return "InProgress"
        return "Failed" if self._error is not None else "Succeeded"


# -- the workspace ---------------------------------------------------------------------------
class FakeAzureML:
    """One Azure ML workspace: endpoints, deployments, models, environments, in memory."""

    def __init__(self, *, polls: int = 3, workspace: str = "fake-ws"):
        self.polls = polls
        self.workspace = workspace
        self.poll_interval = 0.01
        self.endpoints: dict[str, dict[str, Any]] = {}  # name -> {entity, state, traffic, mirror, keys}
        self.deployments: dict[str, dict[str, dict[str, Any]]] = {}  # endpoint -> name -> {...}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}  # (name, version) -> {entity, sha}
        self.environments: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[Any, ...]] = []  # every write, in order
        self.traffic_writes: list[tuple[dict[str, int], dict[str, int]]] = []
        self.uploads: list[str] = []  # model uploads (registrations and inline models)
        # failure injection, by deployment name
        self.quota: set[str] = set()
        self.probe_failure: dict[str, str] = {}  # deployment -> its inference-server log
        self.never_finishes: set[str] = set()
        # the data plane
        self.answers: dict[str, Answer] = {}  # deployment -> answer; default: `answer`
        self.answer: bytes = b'{"ok": true}'
        self.answer_delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.base_url: str | None = None
        self._in_flight: dict[str, int] = {}
        self._operations: dict[tuple[str, str | None], FakeOperation] = {}
        self._lock = threading.Lock()

    # -- endpoints ---------------------------------------------------------------------
    def get_endpoint(self, name: str) -> EndpointInfo:
        self._advance((name, None))
        return self._endpoint_info(self._endpoint(name, Doing(f"read endpoint '{name}'", endpoint=name)))

    def begin_create_endpoint(self, endpoint: Any) -> FakeOperation:
        name = endpoint.name
        doing = Doing(f"create endpoint '{name}'", endpoint=name)
        traffic = _strip_zeros(endpoint.traffic)  # as azure-ai-ml does before sending
        mirror = _strip_zeros(endpoint.mirror_traffic)
        existing = self.endpoints.get(name)
        if existing is None:
            if traffic or mirror:
                raise refuse(
                    400,
                    "BadArgument",
                    "Traffic cannot be set on an endpoint that is being created: it has no "
                    "deployments yet. Create the endpoint, then its deployments, then set traffic.",
                    doing,
                )
            record = {
                "entity": copy.deepcopy(endpoint),
                "state": "Creating",
                "traffic": {},
                "mirror": {},
                "keys": {"primary_key": secrets.token_hex(16), "secondary_key": secrets.token_hex(16)},
            }
            self.endpoints[name] = record
            self.deployments.setdefault(name, {})
            self.calls.append(("create_endpoint", name))

            def created() -> Any:
                record["state"] = "Succeeded"
                return None

            return self._track((name, None), FakeOperation(self.polls, created))
        return self._write_endpoint(name, traffic, mirror, doing)

    def begin_delete_endpoint(self, name: str) -> FakeOperation:
        doing = Doing(f"delete endpoint '{name}'", endpoint=name)
        record = self._endpoint(name, doing)
        record["state"] = "Deleting"
        self.calls.append(("delete_endpoint", name))

        def deleted() -> Any:
            self.endpoints.pop(name, None)
            self.deployments.pop(name, None)
            return None

        return self._track((name, None), FakeOperation(self.polls, deleted))

    def get_keys(self, name: str) -> dict[str, str]:
        record = self._endpoint(name, Doing(f"read the keys of endpoint '{name}'", endpoint=name))
        if record["entity"].auth_mode in ("aml_token", "aad_token"):
            return {"access_token": record["keys"]["primary_key"], "expiry_time_utc": "0"}
        return dict(record["keys"])

    def set_traffic(
        self, endpoint: str, traffic: Mapping[str, int], mirror: Mapping[str, int]
    ) -> FakeOperation:
        doing = Doing(f"set the traffic of endpoint '{endpoint}'", endpoint=endpoint)
        record = self._endpoint(endpoint, doing)  # read ...
        dropped = share_dropped(record["traffic"], record["mirror"], traffic, mirror)
        if dropped is not None:
            raise dropped
        # ... modify only traffic and mirror_traffic, write the rest back as it was
        return self._write_endpoint(endpoint, _strip_zeros(traffic), _strip_zeros(mirror), doing)

    def set_endpoint_tags(self, endpoint: str, tags: Mapping[str, str]) -> FakeOperation:
        doing = Doing(f"tag endpoint '{endpoint}'", endpoint=endpoint)
        record = self._endpoint(endpoint, doing)
        if record["state"] in BUSY:
            raise refuse(409, "Conflict", f"Endpoint '{endpoint}' is {record['state']}; retry later", doing)
        entity = record["entity"]
        entity.tags = {**(entity.tags or {}), **{k: str(v) for k, v in tags.items()}}
        self.calls.append(("tags", dict(tags)))
        return FakeOperation(0, lambda: None)

    # -- deployments -------------------------------------------------------------------
    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        self._endpoint(endpoint, Doing(f"list the deployments of endpoint '{endpoint}'", endpoint=endpoint))
        return [self._deployment_info(endpoint, d) for d in self.deployments[endpoint].values()]

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo:
        doing = Doing(
            f"read deployment '{name}' of endpoint '{endpoint}'", endpoint=endpoint, deployment=name
        )
        self._advance((endpoint, name))
        self._endpoint(endpoint, doing)
        found = self.deployments[endpoint].get(name)
        if found is None:
            raise refuse(404, "ResourceNotFound", f"Deployment '{name}' does not exist", doing)
        return self._deployment_info(endpoint, found)

    def begin_create_deployment(self, deployment: Any) -> FakeOperation:
        endpoint, name = deployment.endpoint_name, deployment.name
        doing = Doing(
            f"deploy '{name}' to endpoint '{endpoint}'",
            endpoint=endpoint,
            deployment=name,
            instance_type=deployment.instance_type,
            instance_count=deployment.instance_count,
            deploying=True,
        )
        record = self._endpoint(endpoint, doing)  # azure-ai-ml reads the endpoint first
        if record["state"] in BUSY:
            raise refuse(409, "Conflict", f"Endpoint '{endpoint}' is {record['state']}; retry later", doing)
        existing = self.deployments[endpoint].get(name)
        if existing is not None and existing["state"] in BUSY:
            raise refuse(409, "Conflict", f"Deployment '{name}' is {existing['state']}; retry later", doing)
        self._check_code(deployment, doing)
        if name in self.quota:
            raise refuse(
                400,
                "OutOfQuota",
                f"Not enough quota available for {deployment.instance_type} in SubscriptionId "
                "00000000-0000-0000-0000-000000000000. Current usage/limit: 4/6. Additional needed: 4",
                doing,
            )
        self._resolve_model(deployment.model, doing)
        entry = {
            "entity": copy.deepcopy(deployment),
            "state": "Updating" if existing else "Creating",
            "logs": {
                "inference-server": f"{name}: starting the inference server\n{name}: init() done",
                "storage-initializer": f"{name}: downloading the model and the code\n{name}: done",
            },
        }
        self.deployments[endpoint][name] = entry
        self.calls.append(("create_deployment", name))
        failure_log = self.probe_failure.pop(name, None)  # one failing revision, not every one

        def finished() -> Any:
            if failure_log is not None:
                entry["state"] = "Failed"
                entry["logs"]["inference-server"] = failure_log
                raise refuse(
                    400,
                    "ResourceNotReady",
                    "User container has crashed or terminated: Liveness probe failed. "
                    "Please see troubleshooting guide.",
                    doing,
                )
            entry["state"] = "Succeeded"
            return None

        operation = FakeOperation(self.polls, finished, never=name in self.never_finishes)
        return self._track((endpoint, name), operation)

    def begin_delete_deployment(self, endpoint: str, name: str) -> FakeOperation:
        doing = Doing(
            f"delete deployment '{name}' of endpoint '{endpoint}'", endpoint=endpoint, deployment=name
        )
        record = self._endpoint(endpoint, doing)
        if name not in self.deployments[endpoint]:
            raise refuse(404, "ResourceNotFound", f"Deployment '{name}' does not exist", doing)
        if record["traffic"].get(name) or record["mirror"].get(name):
            raise refuse(
                400,
                "BadArgument",
                f"Deployment '{name}' has traffic: live {record['traffic'].get(name, 0)}%, mirror "
                f"{record['mirror'].get(name, 0)}%. Set its traffic to 0 before deleting it.",
                doing,
            )
        entry = self.deployments[endpoint][name]
        entry["state"] = "Deleting"
        self.calls.append(("delete_deployment", name))

        def deleted() -> Any:
            self.deployments.get(endpoint, {}).pop(name, None)
            return None

        return self._track((endpoint, name), FakeOperation(self.polls, deleted))

    def get_logs(self, endpoint: str, name: str, *, lines: int, container: str = "inference-server") -> str:
        doing = Doing(f"read the {container} log of '{name}'", endpoint=endpoint, deployment=name)
        if container not in LOG_CONTAINERS:
            raise refuse(400, "BadArgument", f"Invalid container type '{container}'", doing)
        self._endpoint(endpoint, doing)
        entry = self.deployments[endpoint].get(name)
        if entry is None:
            raise refuse(404, "ResourceNotFound", f"Deployment '{name}' does not exist", doing)
        return "\n".join(entry["logs"][container].splitlines()[-lines:])

    # -- assets ------------------------------------------------------------------------
    def ensure_model(self, model: Any) -> tuple[str, bool]:
        key = (model.name, str(model.version))
        content = _content_hash(Path(model.path))
        found = self.models.get(key)
        if found is not None:
            # a version is immutable: same content is the same model, other content is refused
            if found["sha"] != content:
                raise model_version_conflict(*key)
            return f"azureml:{key[0]}:{key[1]}", False
        self.models[key] = {"entity": copy.deepcopy(model), "sha": content}
        self.uploads.append(f"{key[0]}:{key[1]}")
        self.calls.append(("register_model", f"{key[0]}:{key[1]}"))
        return f"azureml:{key[0]}:{key[1]}", True

    def create_environment(self, environment: Any) -> Any:
        key = (environment.name, str(environment.version))
        if key not in self.environments:
            self.environments[key] = copy.deepcopy(environment)
            self.calls.append(("create_environment", f"{key[0]}:{key[1]}"))
        return f"azureml:{key[0]}:{key[1]}"

    # -- waiting -----------------------------------------------------------------------
    def wait(
        self,
        operation: Any,
        *,
        what: str,
        timeout: float,
        endpoint: str,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> Any:
        def pending() -> list[str]:
            record = self.endpoints.get(endpoint)
            if record is None:
                return []
            return provisioning_summary(
                self._endpoint_info(record),
                [self._deployment_info(endpoint, d) for d in self.deployments[endpoint].values()],
            )

        return wait_for(
            operation,
            what=what,
            timeout=timeout,
            on_progress=on_progress,
            still_provisioning=pending,
            poll_interval=self.poll_interval,
        )

    # -- the data plane ----------------------------------------------------------------
    @contextlib.contextmanager
    def serve(self) -> Iterator[FakeAzureML]:
        """Run the scoring URIs on a loopback HTTP server for the duration."""
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), scoring_handler(self.score))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self.base_url = None

    def score(
        self, endpoint: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """What Azure ML's front end does with one scoring request."""
        record = self.endpoints.get(endpoint)
        if record is None:
            return 404, {}, b'{"message": "endpoint not found"}'
        if headers.get("authorization", "") not in {f"Bearer {k}" for k in record["keys"].values()}:
            return 401, {}, b'{"message": "Invalid authentication"}'
        deployments = self.deployments[endpoint]
        pinned = headers.get(PIN_HEADER)
        if pinned:
            chosen = pinned if pinned in deployments else None
        else:
            live = {n: w for n, w in record["traffic"].items() if w > 0}
            chosen = random.choices(list(live), weights=list(live.values()))[0] if live else None
        if chosen is None or deployments[chosen]["state"] not in ("Succeeded", "Updating"):
            return 404, {}, b'{"message": "No valid deployments to route to."}'
        entity = deployments[chosen]["entity"]
        settings = entity.request_settings
        limit = 2 * (settings.max_concurrent_requests_per_instance or 1) * (entity.instance_count or 1)
        with self._lock:
            if self._in_flight.get(chosen, 0) >= limit:
                return 429, {PIN_HEADER: chosen}, b'{"message": "Too many pending requests"}'
            self._in_flight[chosen] = self._in_flight.get(chosen, 0) + 1
            self.requests.append(
                {"deployment": chosen, "pinned": bool(pinned), "traffic_writes": len(self.traffic_writes)}
            )
        try:
            if self.answer_delay_s:
                time.sleep(self.answer_delay_s)
            answer = self.answers.get(chosen)
            status, extra, payload = answer(body) if answer else (200, {}, self.answer)
        finally:
            with self._lock:
                self._in_flight[chosen] -= 1
        return status, {PIN_HEADER: chosen, **extra}, payload

    # -- internals ---------------------------------------------------------------------
    def _track(self, resource: tuple[str, str | None], operation: FakeOperation) -> FakeOperation:
        self._operations[resource] = operation
        return operation

    def _advance(self, resource: tuple[str, str | None]) -> None:
        """Time passes on Azure whether or not anyone polls the operation: a read of the
        resource counts as one poll of the operation running on it."""
        operation = self._operations.get(resource)
        if operation is not None and not operation.done():
            with contextlib.suppress(TdspError):
                operation.wait(timeout=0)

    def _endpoint(self, name: str, doing: Doing) -> dict[str, Any]:
        record = self.endpoints.get(name)
        if record is None:
            raise refuse(404, "ResourceNotFound", f"Endpoint '{name}' does not exist", doing)
        return record

    def _endpoint_info(self, record: dict[str, Any]) -> EndpointInfo:
        entity = record["entity"]
        names = self.deployments.get(entity.name, {})
        return EndpointInfo(
            name=entity.name,
            provisioning_state=record["state"],
            scoring_uri=f"{self.base_url or 'http://127.0.0.1:9'}/{entity.name}/score",
            auth_mode=entity.auth_mode,
            # as azure-ai-ml's get(): deployments without traffic appear with 0
            traffic={n: record["traffic"].get(n, 0) for n in names if not record["mirror"].get(n)},
            mirror_traffic=dict(record["mirror"]),
            tags=dict(entity.tags or {}),
        )

    def _deployment_info(self, endpoint: str, entry: dict[str, Any]) -> DeploymentInfo:
        entity = entry["entity"]
        model = (
            entity.model if isinstance(entity.model, str) else f"{entity.model.name}:{entity.model.version}"
        )
        return DeploymentInfo(
            name=entity.name,
            endpoint_name=endpoint,
            provisioning_state=entry["state"],
            instance_type=entity.instance_type,
            instance_count=entity.instance_count,
            model=model,
            tags=dict(entity.tags or {}),
            spec=copy.deepcopy(entity),
        )

    def _write_endpoint(
        self, name: str, traffic: dict[str, int], mirror: dict[str, int], doing: Doing
    ) -> FakeOperation:
        record = self._endpoint(name, doing)
        if record["state"] in BUSY:
            raise refuse(409, "Conflict", f"Endpoint '{name}' is {record['state']}; retry later", doing)
        problem = _traffic_problem(traffic, mirror, self.deployments[name])
        if problem:
            raise refuse(400, "BadArgument", problem, doing)
        record["state"] = "Updating"
        self.traffic_writes.append((dict(traffic), dict(mirror)))
        self.calls.append(("traffic", dict(traffic), dict(mirror)))

        def applied() -> Any:
            record["traffic"] = dict(traffic)
            record["mirror"] = dict(mirror)
            record["state"] = "Succeeded"
            return None

        return self._track((name, None), FakeOperation(self.polls, applied))

    def _check_code(self, deployment: Any, doing: Doing) -> None:
        code = deployment.code_configuration
        if code is None or deployment.environment is None:
            # Only an MLflow model deploys without a scoring script and environment (no-code
            # deployment); its model folder must hold the MLmodel file.
            model = self._model_entity(deployment.model)
            if (
                code is not None
                or deployment.environment is not None
                or model is None
                or model.type != "mlflow_model"
            ):
                raise refuse(
                    400,
                    "BadArgument",
                    "A scoring script and an environment are required for models other than MLflow "
                    "models (and a scoring script needs an environment)",
                    doing,
                )
            if not (Path(model.path) / "MLmodel").is_file():
                raise refuse(400, "BadArgument", f"No MLmodel file found in {model.path}", doing)
            return
        # azure-ai-ml checks the scoring script exists in the code folder before uploading it
        script = Path(code.code) / code.scoring_script
        if not script.is_file():
            from azure.ai.ml.exceptions import ErrorTarget, ValidationException

            message = f"Failed to locate scoring script {script}"
            raise translate_error(
                ValidationException(
                    message=message, no_personal_data_message=message, target=ErrorTarget.ONLINE_DEPLOYMENT
                ),
                doing,
            )  # type: ignore[misc]

    def _model_entity(self, model: Any) -> Any:
        if not isinstance(model, str):
            return model
        name, version = model.removeprefix("azureml:").split(":")
        found = self.models.get((name, version))
        return found["entity"] if found else None

    def _resolve_model(self, model: Any, doing: Doing) -> None:
        if isinstance(model, str):
            name, version = model.removeprefix("azureml:").split(":")
            if (name, version) not in self.models:
                raise refuse(400, "BadArgument", f"Unable to download user model {name}:{version}", doing)
            return
        # an entity is uploaded and registered by azure-ai-ml, again, on every deployment
        self.uploads.append(f"{model.name}:{model.version} (inline)")


def _traffic_problem(
    traffic: dict[str, int], mirror: dict[str, int], deployments: Mapping[str, Any]
) -> str | None:
    """Azure ML's traffic rules (reference-yaml-endpoint-online, how-to-safely-rollout)."""
    for name in list(traffic) + list(mirror):
        if name not in deployments:
            return f"Traffic rule refers to deployment '{name}', which does not exist on this endpoint."
    for name, weight in {**traffic, **mirror}.items():
        if not isinstance(weight, int) or not 0 <= weight <= 100:
            return f"Traffic for '{name}' must be an integer between 0 and 100, got {weight!r}."
    total = sum(traffic.values())
    if total not in (0, 100):
        return f"The sum of traffic rules must be 0 or 100, got {total}."
    if len(mirror) > 1:
        return "Mirror traffic can be set for one deployment only."
    for name, weight in mirror.items():
        if weight > 50:
            return f"Mirror traffic for '{name}' is {weight}%; it cannot exceed 50%."
        if traffic.get(name):
            return f"Deployment '{name}' takes live traffic and cannot receive mirror traffic."
    return None


def _strip_zeros(weights: Mapping[str, int] | None) -> dict[str, int]:
    return {name: weight for name, weight in (weights or {}).items() if weight}


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


__all__ = ["FakeAzureML", "FakeOperation", "azure_error", "refuse"]
