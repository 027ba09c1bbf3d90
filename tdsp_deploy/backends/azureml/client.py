"""The one door to Azure Machine Learning: a narrow wrapper over azure-ai-ml's ``MLClient``.

Every SDK call runs inside ``translated`` (translate.py), so no caller ever catches an
azure-core or azure-ai-ml exception, and inside ``quiet_sdk`` (quiet.py), so the SDK's own
output stays out of ours. Reads return records (records.py), writes take the SDK entities
built by entities.py, long-running operations come back as ``PendingOperation``
(operations.py). Tests run it over the real MLClient against the ARM emulator (tests/arm/).

azure-ai-ml and azure-identity are imported inside functions only: this module is imported
when a manifest with an azureml target is validated, which must stay fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.azureml.entities import MODEL_SHA256_TAG
from tdsp_deploy.backends.azureml.operations import (
    Operation,
    PendingOperation,
    provisioning_summary,
    wait_for,
)
from tdsp_deploy.backends.azureml.quiet import drop_poller_dots, quiet_sdk
from tdsp_deploy.backends.azureml.records import (
    DeploymentInfo,
    EndpointInfo,
    asset_reference,
    deployment_info,
    endpoint_info,
)
from tdsp_deploy.backends.azureml.translate import Doing, model_version_conflict, share_dropped, translated
from tdsp_deploy.errors import EndpointNotFound

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.target import AzureMLTarget

#: tag on a registered model: the sha256 of its content (entities.build_model sets it), so
#: that a version registered again with other content is caught before Azure is asked
MODEL_HASH_TAG = MODEL_SHA256_TAG

INFERENCE_SERVER = "inference-server"
STORAGE_INITIALIZER = "storage-initializer"
LOG_CONTAINERS = (INFERENCE_SERVER, STORAGE_INITIALIZER)


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
