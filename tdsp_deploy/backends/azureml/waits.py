"""How the azureml backend waits on Azure for one endpoint: each long operation within the
target's timeout, progress told as it goes, and an endpoint made ready for a deployment
(created without traffic, or waited for while an earlier operation or a deletion runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.azureml.operations import TERMINAL_STATES, StatePoller
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, TdspError

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.client import AzureMLClient
    from tdsp_deploy.backends.azureml.operations import Operation
    from tdsp_deploy.backends.azureml.records import EndpointInfo
    from tdsp_deploy.manifest.model import ManifestBase

Tell = Callable[..., None]  # (step, message, **numbers)


class EndpointWaits:
    """Waits on the operations of one endpoint. Each operation gets ``timeout`` whole: Azure
    gives each its own 30 minutes (``x-ms-async-operation-timeout: PT30M``), so creating the
    endpoint does not eat into the deployment's time."""

    def __init__(self, client: AzureMLClient, endpoint: str, timeout: float, tell: Tell):
        self.client = client
        self.endpoint = endpoint
        self.timeout = timeout
        self._tell = tell

    def wait(self, operation: Operation, what: str) -> Any:
        """The operation's result, telling its state as a ``deploy`` step while it runs."""
        return self._wait(
            operation,
            what,
            lambda state, elapsed: self._tell(
                "deploy", f"{what}: {state}", elapsed=elapsed, timeout=self.timeout
            ),
        )

    def wait_for_slot(self, operation: Operation, slot: str) -> None:
        """The deployment's operation, telling its state as a ``health`` step while it runs."""
        self._wait(
            operation,
            f"deployment '{slot}' of endpoint '{self.endpoint}'",
            lambda state, elapsed: self._tell(
                "health", f"waiting for {slot} ({state})", elapsed=elapsed, timeout=self.timeout
            ),
        )

    def watch(
        self,
        fetch: Callable[[], str | None],
        failure: Callable[[str], TdspError],
        terminal: frozenset[str] = TERMINAL_STATES,
    ) -> StatePoller:
        """An operation over a provisioning state that another command's operation changes."""
        pause = getattr(self.client, "poll_interval", 5.0)
        return StatePoller(fetch, failure, pause=pause, terminal=terminal)

    def ready_endpoint(self, manifest: ManifestBase, workspace: str) -> EndpointInfo:
        """The endpoint, created without traffic when it is missing (Azure refuses traffic at
        creation), once no operation runs on it; a Failed endpoint is refused."""
        from tdsp_deploy.backends.azureml import entities

        name = self.endpoint
        try:
            endpoint = self.client.get_endpoint(name)
            state = (endpoint.provisioning_state or "").lower()
            if state == "failed":
                raise BackendError(
                    f"endpoint '{name}' is in state Failed in workspace '{workspace}': "
                    "Azure ML does not deploy into a failed endpoint",
                    hint="delete it with `tdsp-deploy delete MANIFEST` (its deployments go with it) "
                    "and push again",
                )
            if state == "deleting":
                self._await_deletion()
                raise EndpointNotFound(f"endpoint '{name}' was deleted")
        except EndpointNotFound:
            entity = entities.build_endpoint(manifest)
            entity.traffic = {}  # Azure refuses traffic at creation: no deployment exists yet
            entities.validate_entities(entity)
            self._tell("deploy", f"creating endpoint {name} in workspace {workspace}")
            self.wait(self.client.begin_create_endpoint(entity), f"endpoint '{name}'")
            return self.client.get_endpoint(name)
        if (endpoint.provisioning_state or "").lower() not in TERMINAL_STATES:
            # an earlier command's operation is still running: deployments are refused until it ends
            self._tell("deploy", f"endpoint {name} is {endpoint.provisioning_state}; waiting for it")
            watch = self.watch(
                lambda: self.client.get_endpoint(name).provisioning_state,
                lambda state: DeploymentFailed(f"endpoint '{name}' is {state}"),
            )
            self.wait(watch, f"endpoint '{name}'")
            endpoint = self.client.get_endpoint(name)
        return endpoint

    def _await_deletion(self) -> None:
        """An endpoint being deleted (by an earlier command, or someone else) is waited for
        until it is gone; Azure refuses to create it again before."""
        name = self.endpoint

        def state() -> str:
            try:
                return self.client.get_endpoint(name).provisioning_state or "Deleting"
            except EndpointNotFound:
                return "Deleted"

        self._tell("deploy", f"endpoint {name} is being deleted; waiting until it is gone")
        watch = self.watch(
            state,
            lambda found: BackendError(f"endpoint '{name}' did not finish deleting: it is {found}"),
            terminal=frozenset({"deleted"}),
        )
        self.wait(watch, f"deletion of endpoint '{name}'")

    def _wait(self, operation: Operation, what: str, told: Callable[[str, float], None]) -> Any:
        return self.client.wait(
            operation, what=what, timeout=self.timeout, endpoint=self.endpoint, on_progress=told
        )
