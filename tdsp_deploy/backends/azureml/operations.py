"""Long-running operations on Azure ML and how they are waited for.

``PendingOperation`` wraps azure-core's ``LROPoller`` so its errors come out translated;
``StatePoller`` watches a provisioning state this process did not start (an earlier command's
operation); ``wait_for`` waits for either with a deadline and names what is still provisioning
when time runs out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tdsp_deploy.backends.azureml.translate import Doing, translated
from tdsp_deploy.errors import DeploymentTimeout, TdspError

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.records import DeploymentInfo, EndpointInfo

TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "cancelled"})


class Operation(Protocol):
    """A long-running operation: azure-core's ``LROPoller`` surface, or a fake's.

    ``wait`` blocks at most ``timeout`` seconds (raising the error the operation ended with);
    ``result`` is asked for only once ``done()``: on an unfinished ``LROPoller`` it would
    parse the latest operation-status document as if it were the resource."""

    def wait(self, timeout: float | None = None) -> None: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def done(self) -> bool: ...

    def status(self) -> str: ...


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
