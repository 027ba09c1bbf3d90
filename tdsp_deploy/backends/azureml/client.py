"""The one door to Azure Machine Learning: a narrow wrapper over azure-ai-ml's ``MLClient``.

The backend talks to Azure only through ``AzureMLClient``; tests hand it a fake with the same
public methods (tests/azureml_fake.py). Everything Azure says no with is translated here, in
``translate_error``, into ``tdsp_deploy.errors`` with a hint that says what to change, so no
caller ever catches an azure-core or azure-ai-ml exception. The answers of the scoring URI get
the same treatment in ``scoring_error``.

Reads return small records (``EndpointInfo``, ``DeploymentInfo``) rather than SDK entities;
writes take the SDK entities built by ``entities.py``. Long-running operations come back as
``PendingOperation`` (an ``LROPoller`` whose errors are translated) and are waited on with a
deadline by ``wait``.

azure-ai-ml and azure-identity are imported inside functions only: this module is imported
when a manifest with an azureml target is validated, which must stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tdsp_deploy.backends.azureml.entities import MODEL_SHA256_TAG
from tdsp_deploy.errors import (
    BackendError,
    DeploymentFailed,
    DeploymentTimeout,
    EndpointNotFound,
    TdspError,
    UsageError,
)

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.target import AzureMLTarget

#: tag on a registered model: the sha256 of its content (entities.build_model sets it), so
#: that a version registered again with other content is caught before Azure is asked
MODEL_HASH_TAG = MODEL_SHA256_TAG
#: tags on a deployment: what it runs, read back by ``status``
PACKAGE_TAG = "tdsp-deploy-package-id"
CONFIG_TAG = "tdsp-deploy-config-id"
MODEL_VERSION_TAG = "tdsp-deploy-model-version"

INFERENCE_SERVER = "inference-server"
STORAGE_INITIALIZER = "storage-initializer"
LOG_CONTAINERS = (INFERENCE_SERVER, STORAGE_INITIALIZER)

QUOTA_DOCS = "https://learn.microsoft.com/azure/machine-learning/how-to-manage-quotas"
TROUBLESHOOTING_DOCS = (
    "https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints"
)
SIGN_IN_HINT = (
    "sign in with `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "for a service principal (DefaultAzureCredential also takes a managed identity)"
)
WORKSPACE_HINT = "check target.subscription_id, target.resource_group and target.workspace"
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "cancelled"})
# Azure's defaults when request_settings are not given (reference-yaml-deployment-managed-online)
DEFAULT_REQUEST_TIMEOUT_MS = 5000
DEFAULT_MAX_CONCURRENT = 1
MAX_MESSAGE = 600


# -- what the client reads -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EndpointInfo:
    name: str
    provisioning_state: str | None
    scoring_uri: str | None
    auth_mode: str | None
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DeploymentInfo:
    name: str
    endpoint_name: str
    provisioning_state: str | None
    instance_type: str | None
    instance_count: int | None
    model: str | None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the SDK entity as Azure returned it; handed back to ``begin_create_deployment`` to
    #: restore this revision after a failed update
    spec: Any = dataclasses.field(default=None, compare=False, repr=False)


class Operation(Protocol):
    """A long-running operation: azure-core's ``LROPoller`` surface, or a fake's.

    ``wait`` blocks at most ``timeout`` seconds (raising the error the operation ended with);
    ``result`` is asked for only once ``done()``: on an unfinished ``LROPoller`` it would
    parse the latest operation-status document as if it were the resource."""

    def wait(self, timeout: float | None = None) -> None: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def done(self) -> bool: ...

    def status(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Doing:
    """What the client was doing when Azure said no: it shapes the message and the hint."""

    action: str  # "create deployment 'blue' of endpoint 'iris'"
    endpoint: str | None = None
    deployment: str | None = None
    instance_type: str | None = None
    instance_count: int | None = None
    #: a failure is the deployment's own (exit 4), not the platform refusing a call (exit 3)
    deploying: bool = False


# -- error translation: the one place -------------------------------------------------------
def translate_error(exc: BaseException, doing: Doing) -> TdspError | None:
    """Our error for what Azure (or its SDK, or the credential chain) raised; None for an
    exception that is not Azure's (a bug stays a bug)."""
    if isinstance(exc, TdspError):
        return exc
    if not _from_azure(exc):
        return None
    from azure.core import exceptions as core

    text = _service_message(exc)
    codes = _error_codes(exc)
    status = getattr(exc, "status_code", None)
    where = f"{doing.action}: " if doing.action else ""
    details: dict[str, Any] = {"azure_error": sorted(codes)} if codes else {}

    if isinstance(exc, core.ClientAuthenticationError) or status == 401:
        return BackendError(f"{where}Azure did not accept the credentials: {text}", hint=SIGN_IN_HINT)
    if status == 403 or "authorizationfailed" in codes:
        return BackendError(
            f"{where}not allowed: {text}",
            hint="your identity needs a role on the workspace (e.g. AzureML Data Scientist); " + SIGN_IN_HINT,
            details=details,
        )
    if status == 429 or codes & THROTTLED_CODES:
        return BackendError(
            f"{where}Azure is throttling this subscription's requests (HTTP 429), and azure-core's "
            f"retries did not get through: {text}",
            hint="retry later (in a few minutes): Azure Resource Manager limits the requests per "
            "subscription and hour, and other tools or pipelines may share them",
            details={**details, "status": 429},
        )
    if _is_quota(codes, text):
        return DeploymentFailed(
            f"{where}out of quota: {text}",
            hint=_quota_hint(doing),
            details=details,
        )
    if "imagebuildfailure" in codes or "image build" in text.lower():
        return DeploymentFailed(
            f"{where}the environment's image did not build: {text}",
            hint="check environment.requirements / environment.conda_file: every package must "
            "install on environment.image (pin versions); the build log's place in the workspace "
            f"storage is named above. See {TROUBLESHOOTING_DOCS}#error-imagebuildfailure",
            details=details,
        )
    if _is_probe_failure(codes, text):
        return DeploymentFailed(
            f"{where}the scoring container did not start or failed its liveness/readiness probe: {text}",
            hint="init() failed, an import is missing from the environment, or start-up takes longer "
            "than the probes allow: read the log below; raise target.liveness_probe / "
            "target.readiness_probe initial_delay, or pick a larger target.instance_type",
            details=details,
        )
    if "operationcanceled" in codes or ("canceled" in text.lower() and doing.deploying):
        return DeploymentFailed(
            f"{where}Azure canceled the operation: {text}",
            hint="another operation on this endpoint took over; wait for it to finish and push again",
            details=details,
        )
    if isinstance(exc, core.ResourceNotFoundError) or status == 404:
        return _not_found(exc, doing, where, text, details)
    if isinstance(exc, core.ResourceExistsError) or status == 409 or "conflict" in codes:
        return BackendError(
            f"{where}Azure refused: another operation is in progress or the resource conflicts: {text}",
            hint="wait for the running operation on this endpoint to finish (tdsp-deploy status), then retry",
            details=details,
        )
    if isinstance(exc, (core.ServiceRequestError, core.ServiceResponseError)):
        return BackendError(
            f"{where}cannot reach Azure: {text}",
            hint="check the network connection and proxy settings (HTTPS_PROXY)",
        )
    if _is_user_error(exc):
        return UsageError(f"{where}{text}", hint="fix the manifest (tdsp-deploy validate) and retry")
    if doing.deploying:
        return DeploymentFailed(
            f"{where}{text}",
            hint=f"read the log below; see {TROUBLESHOOTING_DOCS}",
            details=details,
        )
    return BackendError(f"{where}Azure ML said: {text}", details=details)


#: ARM's codes for a throttled request
THROTTLED_CODES = frozenset({"toomanyrequests", "subscriptionrequeststhrottled", "throttled"})
_ASSET_PATH = re.compile(r"/(models|environments|codes)/([^/?]+)/versions/([^/?]+)", re.IGNORECASE)
_ASSET_WORDS = {"models": "model", "environments": "environment", "codes": "code"}


def _not_found(
    exc: BaseException, doing: Doing, where: str, text: str, details: dict[str, Any]
) -> TdspError:
    """A 404 says what is missing by the resource asked for, or (for a deployment that refers
    to them) by the asset Azure names: a model, environment or code version is not an
    endpoint, and pushing again is what registers it."""
    request = getattr(getattr(exc, "response", None), "request", None)
    path = urllib.parse.urlsplit(str(getattr(request, "url", "") or "")).path
    asset = _ASSET_PATH.search(path) or _ASSET_PATH.search(text)
    if asset is not None:
        kind = _ASSET_WORDS[asset.group(1).lower()]
        return BackendError(
            f"{where}{kind} '{asset.group(2)}' version '{asset.group(3)}' does not exist in the "
            f"workspace (it may have been deleted or archived): {text}",
            hint="run `tdsp-deploy push MANIFEST` again: a push registers the model, environment and "
            "code it deploys",
            details={**details, "missing": kind},
        )
    deployment = re.search(r"/onlineEndpoints/([^/]+)/deployments/([^/?]+)", path)
    method = str(getattr(request, "method", "GET")).upper()
    if deployment is not None and method != "PUT" and re.search(r"/deployments/[^/]+/?$", path):
        return EndpointNotFound(
            f"{where}deployment '{deployment.group(2)}' does not exist on endpoint "
            f"'{deployment.group(1)}': {text}",
            hint="`tdsp-deploy status MANIFEST` lists the endpoint's deployments",
            details={**details, "missing": "deployment"},
        )
    if re.search(r"/workspaces/[^/]+/?$", path):
        return BackendError(f"{where}workspace not found: {text}", hint=WORKSPACE_HINT)
    return EndpointNotFound(
        f"{where}not found: {text}",
        hint="deploy it with `tdsp-deploy push MANIFEST`; " + WORKSPACE_HINT,
        details={**details, "missing": "endpoint"},
    )


def model_version_conflict(name: str, version: str) -> BackendError:
    """Model versions are immutable on Azure ML: this version exists with other content."""
    return BackendError(
        f"model '{name}' version '{version}' is already registered with other content; "
        "Azure ML model versions cannot change",
        hint="give model.version a new value, or remove it so the version follows the content hash",
    )


def share_dropped(
    current: Mapping[str, int],
    current_mirror: Mapping[str, int],
    traffic: Mapping[str, int],
    mirror: Mapping[str, int],
) -> BackendError | None:
    """A traffic write must name every deployment that has a share now (0 to take it away),
    so a share is never dropped by leaving a name out."""
    missing = sorted(name for name, weight in current.items() if weight and name not in traffic)
    missing += sorted(name for name, weight in current_mirror.items() if weight and name not in mirror)
    if not missing:
        return None
    return BackendError(
        f"refusing a traffic change that leaves out {', '.join(missing)}, which take(s) traffic now",
        hint="name every deployment's share (0 to take traffic away); this is a bug in the caller",
    )


def scoring_error(
    status: int,
    headers: Mapping[str, str],
    *,
    endpoint: str,
    deployment: str | None,
    request_timeout_ms: int | None,
    max_concurrent_requests_per_instance: int | None,
    instance_count: int | None,
) -> BackendError | None:
    """What an answer of the scoring URI means when it is Azure's, not the model's, and what to
    change; None for answers that are the model's own (200, or its own error statuses)."""
    who = f"deployment '{deployment}'" if deployment else f"endpoint '{endpoint}'"
    if status == 401:
        return BackendError(
            f"{who} refused the key or token (HTTP 401)",
            hint="the keys may have been regenerated, or the token expired; run the command again",
        )
    if status == 408:
        limit = request_timeout_ms or DEFAULT_REQUEST_TIMEOUT_MS
        return BackendError(
            f"{who} did not answer within request_timeout_ms ({limit} ms) (HTTP 408)",
            hint="raise target.request_settings.request_timeout_ms (at most 180000), or make run() faster",
            details={"status": status},
        )
    if status == 424:
        code = headers.get("ms-azureml-model-error-statuscode")
        reason = headers.get("ms-azureml-model-error-reason")
        said = f": the scoring container answered {code}" + (f" ({reason})" if reason else "") if code else ""
        return BackendError(
            f"{who} failed to score the request (HTTP 424, model error){said}",
            hint="run() raised or the container is unhealthy: read `tdsp-deploy logs`; if its probes "
            "fail, raise target.liveness_probe / target.readiness_probe delays",
            details={"status": status, "model_status": code, "model_reason": reason},
        )
    if status == 429:
        concurrent = max_concurrent_requests_per_instance or DEFAULT_MAX_CONCURRENT
        count = instance_count or 1
        return BackendError(
            f"{who} is saturated (HTTP 429): Azure accepts at most 2 x "
            f"max_concurrent_requests_per_instance ({concurrent}) x instance_count ({count}) = "
            f"{2 * concurrent * count} requests at a time",
            hint="raise target.request_settings.max_concurrent_requests_per_instance or "
            "target.instance_count, or lower smoke_test.latency.concurrency",
            details={"status": status},
        )
    return None


# -- waiting -------------------------------------------------------------------------------
def wait_for(
    operation: Operation,
    *,
    what: str,
    timeout: float,
    on_progress: Callable[[str, float], None] | None = None,
    still_provisioning: Callable[[], list[str]] | None = None,
    poll_interval: float = 5.0,
) -> Any:
    """Wait for ``operation`` until ``timeout`` seconds have passed; its result, or the error
    it ended with, or DeploymentTimeout naming what was still provisioning."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        remaining = deadline - time.monotonic()
        operation.wait(timeout=max(0.0, min(poll_interval, remaining)))
        if operation.done():
            return operation.result()
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            pending = _safely(still_provisioning) if still_provisioning else []
            raise DeploymentTimeout(
                f"{what} was not ready after {timeout:g} s; still provisioning: "
                + (", ".join(pending) or "nothing Azure reported"),
                hint="raise target.timeout (a managed deployment often takes 10-20 minutes to build "
                "its image and start), or read `tdsp-deploy logs`",
                details={"still_provisioning": pending, "timeout_s": timeout},
            )
        if on_progress is not None:
            on_progress(_safe_status(operation), elapsed)


def provisioning_summary(endpoint: EndpointInfo | None, deployments: list[DeploymentInfo]) -> list[str]:
    """'endpoint iris: Updating', 'deployment green: Creating' for what is not done yet."""
    pending = []
    if endpoint is not None and (endpoint.provisioning_state or "").lower() not in TERMINAL_STATES:
        pending.append(f"endpoint {endpoint.name}: {endpoint.provisioning_state or 'unknown'}")
    for deployment in deployments:
        if (deployment.provisioning_state or "").lower() not in TERMINAL_STATES:
            pending.append(f"deployment {deployment.name}: {deployment.provisioning_state or 'unknown'}")
    return pending


class PendingOperation:
    """An azure-core LROPoller whose errors come out translated."""

    def __init__(
        self, poller: Any, doing: Doing, quiet: Callable[[], contextlib.AbstractContextManager[Any]]
    ):
        self._poller = poller
        self.doing = doing
        self._quiet = quiet

    def wait(self, timeout: float | None = None) -> None:
        with _translated(self.doing), self._quiet():
            self._poller.wait(timeout=timeout)

    def result(self, timeout: float | None = None) -> Any:
        with _translated(self.doing), self._quiet():
            return self._poller.result(timeout=timeout)

    def done(self) -> bool:
        return bool(self._poller.done())

    def status(self) -> str:
        with _translated(self.doing):
            return str(self._poller.status())


class StatePoller:
    """An operation over a provisioning state this process did not start (wait_healthy in a
    later command): done when the state is terminal; Failed raises ``failure()``."""

    def __init__(
        self,
        fetch: Callable[[], str | None],
        failure: Callable[[str], TdspError],
        *,
        pause: float = 0.0,
        terminal: frozenset[str] = TERMINAL_STATES,
    ):
        self._fetch = fetch
        self._failure = failure
        self._state: str | None = None
        self._pause = pause
        self._terminal = terminal

    def wait(self, timeout: float | None = None) -> None:
        self._state = self._fetch()
        state = (self._state or "").lower()
        if state in ("failed", "canceled", "cancelled"):
            raise self._failure(self._state or "Failed")
        if state not in self._terminal:
            time.sleep(min(self._pause, timeout or 0.0))

    def result(self, timeout: float | None = None) -> Any:
        return None

    def done(self) -> bool:
        return (self._state or "").lower() in self._terminal

    def status(self) -> str:
        return self._state or "unknown"


# -- the client ------------------------------------------------------------------------------
class AzureMLClient:
    """The operations the azureml backend needs, over one ``MLClient``."""

    def __init__(self, ml_client: Any, *, workspace: str = "", poll_interval: float = 5.0):
        _drop_poller_dots()
        self._ml = ml_client
        self.workspace = workspace
        self.poll_interval = poll_interval

    @classmethod
    def connect(
        cls,
        target: AzureMLTarget,
        *,
        credential: Any = None,
        poll_interval: float = 5.0,
        **client_options: Any,
    ) -> AzureMLClient:
        """An MLClient for the target's workspace, signed in with DefaultAzureCredential
        (az login, environment variables, managed identity, ...) unless ``credential`` is
        given. Nothing is sent yet: a missing sign-in shows on the first call, translated.

        ``client_options`` go to MLClient and from there to azure-core's pipeline (e.g.
        ``transport``, ``polling_interval``, ``retry_total``)."""
        import logging

        # DefaultAzureCredential logs its whole chain of failures as a warning; the same text
        # is in the error we raise, so it is shown once (unless the user set a level).
        identity_log = logging.getLogger("azure.identity")
        if identity_log.level == logging.NOTSET:
            identity_log.setLevel(logging.ERROR)
        doing = Doing(f"connect to workspace '{target.workspace}'")
        with _translated(doing):
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            ml_client = MLClient(
                credential if credential is not None else DefaultAzureCredential(),
                subscription_id=target.subscription_id,
                resource_group_name=target.resource_group,
                workspace_name=target.workspace,
                show_progress=False,
                **client_options,
            )
        return cls(ml_client, workspace=target.workspace, poll_interval=poll_interval)

    # -- endpoints -------------------------------------------------------------------------
    def get_endpoint(self, name: str) -> EndpointInfo:
        """The endpoint; EndpointNotFound when it does not exist."""
        with self._call(Doing(f"read endpoint '{name}'", endpoint=name)):
            return endpoint_info(self._ml.online_endpoints.get(name))

    def begin_create_endpoint(self, endpoint: Any) -> PendingOperation:
        """Create (or update) an endpoint from its SDK entity. Azure refuses traffic at
        creation: the entity must carry none."""
        doing = Doing(f"create endpoint '{endpoint.name}'", endpoint=endpoint.name)
        with self._call(doing):
            return self._pending(self._ml.online_endpoints.begin_create_or_update(endpoint), doing)

    def begin_delete_endpoint(self, name: str) -> PendingOperation:
        doing = Doing(f"delete endpoint '{name}'", endpoint=name)
        with self._call(doing):
            return self._pending(self._ml.online_endpoints.begin_delete(name=name), doing)

    def get_keys(self, name: str) -> dict[str, str]:
        """``primary_key``/``secondary_key`` (auth_mode key), or ``access_token`` (aml_token,
        aad_token)."""
        with self._call(Doing(f"read the keys of endpoint '{name}'", endpoint=name)):
            credentials = self._ml.online_endpoints.get_keys(name)
        if getattr(credentials, "primary_key", None) is not None:
            return {"primary_key": credentials.primary_key, "secondary_key": credentials.secondary_key}
        return {
            "access_token": credentials.access_token,
            "expiry_time_utc": str(getattr(credentials, "expiry_time_utc", "")),
        }

    def set_traffic(
        self, endpoint: str, traffic: Mapping[str, int], mirror: Mapping[str, int]
    ) -> PendingOperation:
        """Read-modify-write of the endpoint's ``traffic`` and ``mirror_traffic``: the endpoint
        is read, only those two fields change, and it is written back whole. ``traffic`` and
        ``mirror`` must name every deployment that has a share now (see ``share_dropped``)."""
        doing = Doing(f"set the traffic of endpoint '{endpoint}'", endpoint=endpoint)
        with self._call(doing):
            entity = self._ml.online_endpoints.get(endpoint)
            refused = share_dropped(
                dict(entity.traffic or {}), dict(entity.mirror_traffic or {}), traffic, mirror
            )
            if refused is not None:
                raise refused
            entity.traffic = {name: int(weight) for name, weight in traffic.items()}
            entity.mirror_traffic = {name: int(weight) for name, weight in mirror.items() if weight}
            return self._pending(self._ml.online_endpoints.begin_create_or_update(entity), doing)

    # -- deployments -----------------------------------------------------------------------
    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        with self._call(Doing(f"list the deployments of endpoint '{endpoint}'", endpoint=endpoint)):
            return [deployment_info(d, endpoint) for d in self._ml.online_deployments.list(endpoint)]

    def get_deployment(self, endpoint: str, name: str) -> DeploymentInfo:
        """The deployment; EndpointNotFound when it (or its endpoint) does not exist."""
        doing = Doing(
            f"read deployment '{name}' of endpoint '{endpoint}'", endpoint=endpoint, deployment=name
        )
        with self._call(doing):
            return deployment_info(
                self._ml.online_deployments.get(name=name, endpoint_name=endpoint), endpoint
            )

    def begin_create_deployment(self, deployment: Any) -> PendingOperation:
        """Create or update a deployment (uploads its code); the operation ends when it serves."""
        doing = Doing(
            f"deploy '{deployment.name}' to endpoint '{deployment.endpoint_name}'",
            endpoint=deployment.endpoint_name,
            deployment=deployment.name,
            instance_type=getattr(deployment, "instance_type", None),
            instance_count=getattr(deployment, "instance_count", None),
            deploying=True,
        )
        with self._call(doing):
            return self._pending(self._ml.online_deployments.begin_create_or_update(deployment), doing)

    def begin_delete_deployment(self, endpoint: str, name: str) -> PendingOperation:
        doing = Doing(
            f"delete deployment '{name}' of endpoint '{endpoint}'", endpoint=endpoint, deployment=name
        )
        with self._call(doing):
            return self._pending(
                self._ml.online_deployments.begin_delete(name=name, endpoint_name=endpoint), doing
            )

    def get_logs(self, endpoint: str, name: str, *, lines: int, container: str = INFERENCE_SERVER) -> str:
        """The last ``lines`` lines of one container's log (inference-server or storage-initializer)."""
        doing = Doing(f"read the {container} log of '{name}'", endpoint=endpoint, deployment=name)
        with self._call(doing):
            return str(
                self._ml.online_deployments.get_logs(
                    name=name, endpoint_name=endpoint, lines=lines, container_type=container
                )
            )

    # -- assets ----------------------------------------------------------------------------
    def ensure_model(self, model: Any) -> tuple[str, bool]:
        """Register ``model`` unless its name and version exist; returns the registered model's
        reference (for the deployment) and whether it was uploaded now. A version that exists
        with another content hash (MODEL_HASH_TAG) is refused: versions are immutable.

        The deployment must get the reference, not the entity: handed an entity, azure-ai-ml
        uploads and registers it again."""
        doing = Doing(f"register model '{model.name}' version '{model.version}'")
        with self._call(doing):
            existing = self._existing(lambda: self._ml.models.get(name=model.name, version=model.version))
            if existing is not None:
                wanted = (model.tags or {}).get(MODEL_HASH_TAG)
                found = (existing.tags or {}).get(MODEL_HASH_TAG)
                if wanted and found and wanted != found:
                    raise model_version_conflict(model.name, str(model.version))
                return asset_reference(existing), False
            return asset_reference(self._ml.models.create_or_update(model)), True

    def create_environment(self, environment: Any) -> Any:
        """Register ``environment`` unless its name and version exist (its version follows its
        content, see entities.environment_version); returns its reference. An anonymous one is
        returned as it is, for the deployment to carry inline."""
        if not getattr(environment, "name", None) or not getattr(environment, "version", None):
            return environment
        doing = Doing(f"register environment '{environment.name}' version '{environment.version}'")
        with self._call(doing):
            existing = self._existing(
                lambda: self._ml.environments.get(name=environment.name, version=environment.version)
            )
            if existing is not None:
                return asset_reference(existing)
            return asset_reference(self._ml.environments.create_or_update(environment))

    # -- waiting ---------------------------------------------------------------------------
    def wait(
        self,
        operation: Operation,
        *,
        what: str,
        timeout: float,
        endpoint: str,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> Any:
        """Wait for ``operation`` (see ``wait_for``); on timeout, name what was still provisioning."""

        def pending() -> list[str]:
            try:
                info = self.get_endpoint(endpoint)
            except EndpointNotFound:
                return []
            return provisioning_summary(info, self.list_deployments(endpoint))

        return wait_for(
            operation,
            what=what,
            timeout=timeout,
            on_progress=on_progress,
            still_provisioning=pending,
            poll_interval=self.poll_interval,
        )

    # -- internals -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _call(self, doing: Doing) -> Iterator[None]:
        with _translated(doing), _quiet_stdout():
            yield

    def _pending(self, poller: Any, doing: Doing) -> PendingOperation:
        return PendingOperation(poller, doing, _quiet_stdout)

    @staticmethod
    def _existing(get: Callable[[], Any]) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return get()
        except ResourceNotFoundError:
            return None


# -- records from SDK entities ---------------------------------------------------------------
def asset_reference(asset: Any) -> str:
    """How a deployment names a registered model or environment: its ARM id, or
    ``azureml:name:version``."""
    asset_id = getattr(asset, "id", None)
    if isinstance(asset_id, str) and asset_id.startswith("/subscriptions/"):
        return asset_id
    return f"azureml:{asset.name}:{asset.version}"


def endpoint_info(entity: Any) -> EndpointInfo:
    return EndpointInfo(
        name=entity.name,
        provisioning_state=_state_text(entity.provisioning_state),
        scoring_uri=entity.scoring_uri,
        auth_mode=entity.auth_mode,
        traffic={k: int(v) for k, v in (entity.traffic or {}).items()},
        mirror_traffic={k: int(v) for k, v in (entity.mirror_traffic or {}).items() if v},
        tags=dict(entity.tags or {}),
    )


def deployment_info(entity: Any, endpoint: str) -> DeploymentInfo:
    model = entity.model
    if model is not None and not isinstance(model, str):
        model = getattr(model, "id", None) or f"{model.name}:{model.version}"
    return DeploymentInfo(
        name=entity.name,
        endpoint_name=entity.endpoint_name or endpoint,
        provisioning_state=_state_text(entity.provisioning_state),
        instance_type=entity.instance_type,
        instance_count=entity.instance_count,
        model=model,
        tags=dict(entity.tags or {}),
        spec=entity,
    )


# -- helpers -------------------------------------------------------------------------------
def _state_text(state: Any) -> str | None:
    """A provisioning state as Azure spells it ("Creating"), whether the SDK gives a string or
    one of its enums (whose str() is "DeploymentProvisioningState.CREATING")."""
    if state is None:
        return None
    return str(getattr(state, "value", state))


@contextlib.contextmanager
def _translated(doing: Doing) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        translated = translate_error(exc, doing)
        if translated is None or translated is exc:
            raise
        raise translated from exc


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """The SDK's own output kept out of ours for the duration of a call: its prints (upload
    progress, a colour reset on stderr after each upload) and its loggers' messages ("Check:
    endpoint ... exists", the experimental-class warnings), which it sends to stderr through
    handlers of its own. The CLI writes through the streams it captured at start, so swapping
    sys.stdout and sys.stderr for the duration of a call is safe."""
    _silence_sdk_loggers()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


_SILENCED: set[str] = set()


def _silence_sdk_loggers() -> None:
    """azure-ai-ml gives many of its module loggers a stderr handler at INFO; those handlers
    are removed (the records still propagate, so `--debug` logging shows them), and a null
    handler keeps Python's last-resort handler from printing warnings the SDK logs."""
    import logging

    root = logging.getLogger("azure.ai.ml")
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name in _SILENCED or not name.startswith("azure.ai.ml") or not isinstance(logger, logging.Logger):
            continue
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        _SILENCED.add(name)


class _WithoutPollerDots(io.TextIOBase):
    """sys.stdout without what azure-core's poller threads write to it: azure-ai-ml's
    deployment poller prints a dot per poll from its own thread, between our calls, which
    would break `--json` (one document on stdout). Everything else passes through."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread().name.startswith("LROPoller"):
            return len(text)
        return int(self._stream.write(text) or 0)

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _drop_poller_dots() -> None:
    if not isinstance(sys.stdout, _WithoutPollerDots):
        sys.stdout = _WithoutPollerDots(sys.stdout)


def _from_azure(exc: BaseException) -> bool:
    modules = [type(exc).__module__] + [k.__module__ for k in type(exc).__mro__]
    return any(m.startswith(("azure.", "msrest", "marshmallow")) for m in modules)


def _service_message(exc: BaseException) -> str:
    """Azure's message, and its details' messages: a refusal often says only "The request is
    invalid." at the top and what is wrong (a quota, a missing asset) in ``details``."""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    if not message:
        message = getattr(exc, "message", None) or str(exc)
    parts = [str(message)]
    for detail in getattr(error, "details", None) or []:
        said = getattr(detail, "message", None)
        if said and str(said) not in parts[0]:
            parts.append(str(said))
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _error_codes(exc: BaseException) -> set[str]:
    """Every service error code in the exception, lower-cased: the top one and the details'."""
    codes: set[str] = set()

    def collect(error: Any, depth: int = 0) -> None:
        if error is None or depth > 5:
            return
        code = getattr(error, "code", None)
        if code:
            codes.add(str(code).lower())
        for detail in getattr(error, "details", None) or []:
            collect(detail, depth + 1)
        inner = getattr(error, "innererror", None)
        if isinstance(inner, Mapping) and inner.get("code"):
            codes.add(str(inner["code"]).lower())

    collect(getattr(exc, "error", None))
    # an LRO failure carries the operation's status document as the response body
    response = getattr(exc, "response", None)
    if response is not None and not codes:
        with contextlib.suppress(Exception):
            doc = json.loads(response.text())
            error = doc.get("error") or {}
            if error.get("code"):
                codes.add(str(error["code"]).lower())
    return codes


def _is_quota(codes: set[str], text: str) -> bool:
    lowered = text.lower()
    return bool(codes & {"outofquota", "quotaexceeded", "insufficientquota"}) or (
        "quota" in lowered and ("not enough" in lowered or "exceed" in lowered or "out of" in lowered)
    )


def _is_probe_failure(codes: set[str], text: str) -> bool:
    lowered = text.lower()
    return "resourcenotready" in codes or any(
        phrase in lowered
        for phrase in ("liveness probe", "readiness probe", "container crashed", "crashloop")
    )


def _is_user_error(exc: BaseException) -> bool:
    names = {k.__name__ for k in type(exc).__mro__}
    return bool(
        names
        & {
            "ValidationException",
            "UserErrorException",
            "AssetException",
            "ModelException",
            "EmptyDirectoryError",
            "ValidationError",  # marshmallow, from the SDK's schema checks
        }
    )


def _quota_hint(doing: Doing) -> str:
    asked = ""
    if doing.instance_type:
        count = doing.instance_count or 1
        asked = (
            f"the deployment asks for {count} x {doing.instance_type} "
            "(Azure also reserves 20% more for upgrades); "
        )
    return (
        asked
        + "lower target.instance_count, choose a smaller target.instance_type, delete deployments you no "
        f"longer need, or request more quota: {QUOTA_DOCS}"
    )


def _safely(fetch: Callable[[], list[str]]) -> list[str]:
    try:
        return fetch()
    except TdspError:
        return []


def _safe_status(operation: Operation) -> str:
    try:
        return operation.status()
    except TdspError:
        return "unknown"
