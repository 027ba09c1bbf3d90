"""The azureml target: a managed online endpoint on Azure Machine Learning, one deployment per slot.

A slot is a deployment; its traffic and mirror shares are the endpoint's ``traffic`` and
``mirror_traffic``, changed read-modify-write; what it runs is kept in its tags. Azure updates
a deployment in place, so undoing a failed update submits the previous revision's spec again.
Everything goes through ``AzureMLClient`` (client.py), which imports the SDK inside its
functions: this module is imported when a manifest is validated.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.azureml.import_command import run_import
from tdsp_deploy.backends.azureml.target import AzureMLTarget
from tdsp_deploy.backends.base import (
    Backend,
    Caller,
    Capabilities,
    EndpointStatus,
    ProgressEvent,
    SlotStatus,
    no_progress,
    refuse_unless_deletable,
)
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, TdspError, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.client import AzureMLClient
    from tdsp_deploy.backends.azureml.operations import Operation
    from tdsp_deploy.backends.azureml.records import DeploymentInfo
    from tdsp_deploy.backends.azureml.waits import EndpointWaits
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage

LOG_TAIL_LINES = 30
#: lines asked for when `logs` is given no tail (the service caps what it returns)
ALL_LOG_LINES = 10_000
_NEW = object()  # marks a slot that did not exist before deploy_slot


class AzureMLBackend(Backend):
    """Azure Machine Learning managed online endpoints, through azure-ai-ml."""

    kind = "azureml"
    target_model = AzureMLTarget
    extra = "azureml"
    requires = ("azure.ai.ml", "azure.identity")
    capabilities = Capabilities(weighted_traffic=True, mirror=True)
    importer = staticmethod(run_import)  # az ml endpoint and deployment YAML to manifests

    def __init__(
        self,
        manifest: ManifestBase,
        *,
        progress: Progress = no_progress,
        client: AzureMLClient | None = None,
    ):
        super().__init__(manifest, progress=progress)
        self.target: AzureMLTarget
        self._client = client
        # slot -> the operation deploy_slot started, for wait_healthy
        self._operations: dict[str, Operation] = {}
        # slot -> the revision deploy_slot replaced (DeploymentInfo), or _NEW
        self._replaced: dict[str, Any] = {}

    @property
    def client(self) -> AzureMLClient:
        """The client, connected on first use (never when a test handed one in)."""
        if self._client is None:
            from tdsp_deploy.backends.azureml.client import AzureMLClient

            self._client = AzureMLClient.connect(self.target)
        return self._client

    @property
    def endpoint_name(self) -> str:
        return self.manifest.name

    # -- reading -------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """The endpoint's provisioning state and scoring URI; per deployment its state,
        instance type and count, traffic and mirror share, and what it runs (from its tags)."""
        from tdsp_deploy.backends.azureml.records import slot_status

        try:
            endpoint = self.client.get_endpoint(self.endpoint_name)
            deployments = self.client.list_deployments(self.endpoint_name)
        except EndpointNotFound:  # also: deleted between the two reads
            return EndpointStatus(name=self.endpoint_name, kind=self.kind, exists=False)
        return EndpointStatus(
            name=endpoint.name,
            kind=self.kind,
            exists=True,
            scoring_uri=endpoint.scoring_uri,
            slots=[slot_status(d, endpoint) for d in sorted(deployments, key=lambda d: d.name)],
            details={
                "provisioning_state": endpoint.provisioning_state,
                "auth_mode": endpoint.auth_mode,
                "workspace": self.target.workspace,
                "resource_group": self.target.resource_group,
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The inference-server container's log of the deployment (the last ``tail`` lines)."""
        from tdsp_deploy.backends.azureml.client import INFERENCE_SERVER

        self._deployment(slot)
        return self.client.get_logs(
            self.endpoint_name, slot, lines=tail or ALL_LOG_LINES, container=INFERENCE_SERVER
        )

    def credentials(self) -> dict[str, str]:
        """``primary_key`` and ``secondary_key`` (auth_mode key), or ``access_token`` (token modes)."""
        return self.client.get_keys(self.endpoint_name)

    def preflight(self) -> list[str]:
        """Azure ML's rules that need the whole manifest (errors), and warnings: default image,
        missing inference server, VM size, a smoke test that would hit the concurrency limit."""
        from tdsp_deploy.backends.azureml.target import azureml_warnings, check_manifest_for_azureml
        from tdsp_deploy.errors import ManifestError

        problems = check_manifest_for_azureml(self.manifest)
        if problems:
            raise ManifestError("\n".join(problems), hint="fix the manifest for Azure ML and push again")
        warnings = azureml_warnings(self.manifest)
        settings = self.target.request_settings
        accepted = 2 * settings.max_concurrent_requests_per_instance * self.target.instance_count
        smoke = self.manifest.smoke_test
        if smoke is not None and smoke.latency.concurrency > accepted:
            warnings.append(
                f"smoke_test.latency.concurrency ({smoke.latency.concurrency}) is above what the "
                f"deployment accepts at once (2 x max_concurrent_requests_per_instance x instance_count "
                f"= {accepted}): expect HTTP 429; lower it or raise those settings"
            )
        if self.manifest.rollout.sticky_header:
            warnings.append(
                "rollout.sticky_header is ignored on Azure ML: the endpoint splits traffic per request"
            )
        return warnings

    def minute_metrics(self) -> Any:
        """Azure Monitor's per-minute metrics of the endpoint's deployments."""
        from tdsp_deploy.backends.azureml.monitor import EndpointMetrics

        return EndpointMetrics.connect(self.target, self.manifest.name)

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """A lock file per workspace and endpoint on this machine. Across machines, Azure itself
        refuses a second operation on a deployment that is being changed (409, translated)."""
        from tdsp_deploy import paths
        from tdsp_deploy.locks import FileLock

        home = paths.state_home() / "azureml" / self.target.subscription_id / self.target.resource_group
        path = home / self.target.workspace / "endpoints" / self.endpoint_name / ".lock"

        def told(message: str) -> None:
            self.progress(ProgressEvent(step="lock", message=message))

        return FileLock(path, self.endpoint_name, timeout=timeout, on_wait=told)

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Create the endpoint without traffic if it is missing, register the model (skipped
        when its content-hash version exists) and the environment, then create or update the
        deployment from the unpacked package. Returns once Azure has accepted the deployment;
        ``wait_healthy`` waits for it."""
        from tdsp_deploy.backends.azureml import entities
        from tdsp_deploy.backends.azureml.records import CONFIG_TAG, MODEL_VERSION_TAG, PACKAGE_TAG
        from tdsp_deploy.backends.azureml.upload import code_for_upload

        lock = package.lock
        package_dir = self.unpacked(package, "azureml")
        model = entities.build_model(self.manifest, lock, package_dir / lock.model.path)
        no_code = entities.is_no_code(self.manifest)  # an MLflow model: Azure ML brings both
        environment = (
            None
            if no_code
            else entities.build_environment(
                self.manifest, lock, package_dir / "environment" if lock.environment else None
            )
        )
        # before anything is created or uploaded
        entities.validate_entities(model, *([environment] if environment is not None else []))

        self._waits.ready_endpoint(self.manifest, self.target.workspace)
        registered_model, uploaded = self.client.ensure_model(model)
        self.tell(
            "deploy",
            f"model {model.name}:{model.version} "
            + ("registered" if uploaded else "already registered; not uploaded again"),
        )
        registered_environment = None if environment is None else self.client.create_environment(environment)
        deployment = entities.build_deployment(
            self.manifest,
            slot,
            model=registered_model,
            environment=registered_environment,
            code_dir=None if no_code else code_for_upload(self.manifest, package_dir),
            scoring_script=None if no_code else lock.scoring_script_name,
            extra_tags={
                PACKAGE_TAG: package.package_id,
                CONFIG_TAG: self.config_id(package),
                MODEL_VERSION_TAG: lock.model_version,
            },
        )
        entities.validate_entities(deployment)
        previous = self._find_deployment(slot)
        self.tell(
            "deploy",
            f"{'updating' if previous else 'creating'} deployment {slot} "
            f"({self.target.instance_count} x {self.target.instance_type})",
        )
        try:
            operation = self.client.begin_create_deployment(deployment)
        except DeploymentFailed:
            # Refused on submission (quota, bad argument): nothing to wait for. A new
            # deployment Azure left behind in Failed state is removed; an existing one is
            # untouched by a refused update.
            if previous is None:
                self._remove_quietly(slot)
            raise
        self._operations[slot] = operation
        self._replaced[slot] = previous if previous is not None else _NEW
        return self._current_slot(slot) or SlotStatus(name=slot, state="starting")

    def wait_healthy(self, slot: str) -> SlotStatus:
        """Wait, up to target.timeout, for the deployment's operation to end. A failure
        (DeploymentFailed, exit 4) or a timeout (DeploymentTimeout, naming what was still
        provisioning) carries the tail of the inference-server and storage-initializer logs."""
        operation = self._operations.pop(slot, None)
        if operation is None:  # deployed by an earlier command: watch its state instead
            operation = self._waits.watch(
                lambda: self.client.get_deployment(self.endpoint_name, slot).provisioning_state,
                lambda state: DeploymentFailed(
                    f"deployment '{slot}' is {state}", hint="read the log below, fix it and push again"
                ),
            )
        started = time.monotonic()
        try:
            self._waits.wait_for_slot(operation, slot)
            found = self._current_slot(slot)
            if found is None or found.state != "healthy":
                raise DeploymentFailed(
                    f"deployment '{slot}' is {found.details.get('provisioning_state') if found else 'gone'} "
                    "after its operation ended",
                    hint="read the log below, fix it and push again",
                )
        except DeploymentFailed as failure:
            failure.details.setdefault("log_tail", self._log_tail(slot))
            raise
        self.tell("health", f"{slot} is healthy", elapsed=time.monotonic() - started)
        return found

    def finalize_slot(self, slot: str) -> None:
        """Nothing to remove: Azure ML updates a deployment in place and keeps no old revision.
        Only the spec kept for undo is dropped."""
        self._replaced.pop(slot, None)
        self._operations.pop(slot, None)

    def discard_slot(self, slot: str) -> None:
        """Undo ``deploy_slot``: a deployment it created is deleted; one it updated is given
        its previous spec again (read before the update) and waited for.

        Limitation: the previous spec lives in this process only. A discard in a later
        command, after the pushing one died, deletes the slot when it takes no traffic, and
        otherwise leaves it as it is (Azure refuses to delete a deployment with traffic).
        """
        self._operations.pop(slot, None)
        busy = self._still_provisioning(slot)
        if busy is not None:
            # Azure refuses to delete or change a deployment while its operation runs (409):
            # say what is left and how to remove it once Azure is done with it
            raise BackendError(
                f"deployment '{slot}' is still {busy} on Azure, which refuses to delete or change it "
                "until its operation ends; it takes no traffic",
                hint=f"once `tdsp-deploy status MANIFEST` shows it Succeeded or Failed, delete it with "
                f"`tdsp-deploy delete MANIFEST --deployment {slot}` (or push again)",
                details={"left_behind": slot, "provisioning_state": busy},
            )
        replaced = self._replaced.pop(slot, None)
        if replaced is not None and replaced is not _NEW and replaced.spec is not None:
            self.tell("rollback", f"restoring the previous revision of {slot}")
            operation = self.client.begin_create_deployment(replaced.spec)
            self._wait(operation, f"restoring deployment '{slot}'")
            return
        current = self._current_slot(slot)
        if current is None:
            return
        if replaced is None and (current.traffic or current.mirror):
            return  # unknown history and live: leave it (see the docstring)
        self.tell("rollback", f"deleting deployment {slot}")
        self._delete_deployment(slot)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Validate the split (tdsp_deploy.traffic), then write it to the endpoint read-modify-
        write, naming every deployment (0 for those that lose their share)."""
        from tdsp_deploy.traffic import TrafficSplit, validate

        status = self.status()
        if not status.exists:
            raise EndpointNotFound(
                f"endpoint '{self.endpoint_name}' does not exist in workspace '{self.target.workspace}'",
                hint="deploy it with `tdsp-deploy push MANIFEST`",
            )
        if mirror is None:
            mirror = dict(status.mirror)
        names = [slot.name for slot in status.slots]
        validate(TrafficSplit(traffic, mirror), names)
        live = {name: traffic.get(name, 0) for name in names}
        mirrored = {
            name: mirror.get(name, 0) for name in names if mirror.get(name, 0) or status.mirror.get(name)
        }
        operation = self.client.set_traffic(self.endpoint_name, live, mirrored)
        self._wait(operation, f"traffic change of endpoint '{self.endpoint_name}'")

    def endpoint_tags(self) -> dict[str, str]:
        """The endpoint's tags as Azure keeps them ({} when there is no endpoint)."""
        try:
            return dict(self.client.get_endpoint(self.endpoint_name).tags)
        except EndpointNotFound:
            return {}

    def write_endpoint_tags(self, tags: dict[str, str]) -> None:
        """Add or replace some of the endpoint's tags, through an endpoint update."""
        operation = self.client.set_endpoint_tags(self.endpoint_name, tags)
        self._wait(operation, f"tag update of endpoint '{self.endpoint_name}'")

    def delete(self, slot: str | None = None) -> None:
        """Delete one deployment (refused while it takes live or mirrored traffic, as Azure
        refuses it), or the whole endpoint with its deployments."""
        if slot is None:
            from tdsp_deploy.traffic import TrafficHistory

            self.client.get_endpoint(self.endpoint_name)  # EndpointNotFound, said clearly
            self.tell("delete", f"deleting endpoint {self.endpoint_name} and its deployments")
            operation = self.client.begin_delete_endpoint(self.endpoint_name)
            self._wait(operation, f"deleting endpoint '{self.endpoint_name}'")
            TrafficHistory(self.kind, self.endpoint_name).clear()
            return
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(
                f"endpoint '{self.endpoint_name}' does not exist in workspace '{self.target.workspace}'"
            )
        # Azure refuses it too, with a less helpful message
        refuse_unless_deletable(self.endpoint_name, slot, status.slot(slot), (s.name for s in status.slots))
        self._delete_deployment(slot)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers of the scoring URI with the endpoint's key (or token) as bearer, pinned with
        the ``azureml-model-deployment`` header when ``slot`` is given. Azure's own refusals
        (401, 408, 424, 429) raise BackendError saying what to change."""
        from tdsp_deploy.backends.azureml.scoring import scoring_callers

        return scoring_callers(self.client, self.target, self.endpoint_name, slot)

    # -- reviewing -----------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """The az ml YAML a push would send (endpoint, deployment, model, environment), written
        by render.render_yaml from the unpacked package."""
        from tdsp_deploy.backends.azureml.render import render_yaml

        slot = self.manifest.rollout.deployment or "blue"
        return render_yaml(
            self.manifest, package.lock, out_dir, slot, package_dir=self.unpacked(package, "azureml")
        )

    # -- internals -----------------------------------------------------------------------
    def _find_deployment(self, slot: str) -> DeploymentInfo | None:
        try:
            return self.client.get_deployment(self.endpoint_name, slot)
        except EndpointNotFound:
            return None

    def _deployment(self, slot: str) -> DeploymentInfo:
        found = self._find_deployment(slot)
        if found is None:
            names = [d.name for d in self.client.list_deployments(self.endpoint_name)]
            raise UsageError(
                f"endpoint '{self.endpoint_name}' has no deployment '{slot}'",
                hint=f"deployments: {', '.join(names) or 'none'}",
            )
        return found

    def _still_provisioning(self, slot: str) -> str | None:
        """The deployment's provisioning state while an operation of Azure runs on it."""
        found = self._find_deployment(slot)
        state = (found.provisioning_state or "") if found is not None else ""
        return state if state.lower() in ("creating", "updating", "scaling") else None

    def _current_slot(self, slot: str) -> SlotStatus | None:
        return self.status().slot(slot)

    def _delete_deployment(self, slot: str) -> None:
        try:
            operation = self.client.begin_delete_deployment(self.endpoint_name, slot)
        except EndpointNotFound:
            return
        self._wait(operation, f"deleting deployment '{slot}'")

    def _remove_quietly(self, slot: str) -> None:
        with contextlib.suppress(TdspError):
            if self._find_deployment(slot) is not None:
                self._delete_deployment(slot)

    @property
    def _waits(self) -> EndpointWaits:
        from tdsp_deploy.backends.azureml.waits import EndpointWaits

        return EndpointWaits(self.client, self.endpoint_name, self.target.timeout, self.tell)

    def _wait(self, operation: Operation, what: str) -> Any:
        return self._waits.wait(operation, what)

    def _log_tail(self, slot: str, lines: int = LOG_TAIL_LINES) -> str:
        """The tail of both containers' logs: storage-initializer (model and code download)
        and inference-server (init() and the server)."""
        from tdsp_deploy.backends.azureml.client import LOG_CONTAINERS

        parts = []
        for container in LOG_CONTAINERS:
            try:
                text = self.client.get_logs(self.endpoint_name, slot, lines=lines, container=container)
            except TdspError as exc:
                text = f"(not available: {exc.message})"
            parts.append(f"--- {container} ---\n{text.rstrip() or '(empty)'}")
        return "\n".join(parts)

