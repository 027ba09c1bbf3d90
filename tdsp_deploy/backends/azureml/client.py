"""The one door to Azure Machine Learning: a narrow wrapper over azure-ai-ml's ``MLClient``.

The backend talks to Azure only through ``AzureMLClient``; its tests run it over the real
MLClient against an Azure Resource Manager emulator at the HTTP transport (tests/arm/), and a
few hand it a fake with the same public methods (tests/azureml_fake.py). Every SDK call runs
inside ``translated`` (translate.py), so no caller ever catches an azure-core or azure-ai-ml
exception, and inside ``quiet_sdk`` (quiet.py), so the SDK's own output stays out of ours.

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
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tdsp_deploy.backends.azureml.entities import MODEL_SHA256_TAG
from tdsp_deploy.backends.azureml.quiet import drop_poller_dots, quiet_sdk
from tdsp_deploy.backends.azureml.translate import (  # noqa: F401 - part of this module's surface
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_REQUEST_TIMEOUT_MS,
    QUOTA_DOCS,
    SIGN_IN_HINT,
    TROUBLESHOOTING_DOCS,
    WORKSPACE_HINT,
    Doing,
    model_version_conflict,
    scoring_error,
    share_dropped,
    translate_error,
    translated,
)
from tdsp_deploy.errors import (
    DeploymentTimeout,
    EndpointNotFound,
    TdspError,
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

TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "cancelled"})


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


# -- error translation: the one place -------------------------------------------------------


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
        with translated(self.doing), self._quiet():
            self._poller.wait(timeout=timeout)

    def result(self, timeout: float | None = None) -> Any:
        with translated(self.doing), self._quiet():
            return self._poller.result(timeout=timeout)

    def done(self) -> bool:
        return bool(self._poller.done())

    def status(self) -> str:
        with translated(self.doing):
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
        drop_poller_dots()
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
        with translated(doing):
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

    def set_endpoint_tags(self, endpoint: str, tags: Mapping[str, str]) -> PendingOperation:
        """Read-modify-write of the endpoint's tags: ``tags`` join (key by key, replacing)
        the ones it has; everything else is written back as it was read."""
        doing = Doing(f"tag endpoint '{endpoint}'", endpoint=endpoint)
        with self._call(doing):
            entity = self._ml.online_endpoints.get(endpoint)
            entity.tags = {**(entity.tags or {}), **{k: str(v) for k, v in tags.items()}}
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
        with translated(doing), quiet_sdk():
            yield

    def _pending(self, poller: Any, doing: Doing) -> PendingOperation:
        return PendingOperation(poller, doing, quiet_sdk)

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
