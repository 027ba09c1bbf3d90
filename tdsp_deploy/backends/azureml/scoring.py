"""Callers of an Azure ML endpoint's scoring URI: the endpoint's key (or token) as bearer, a
deployment pinned with the ``azureml-model-deployment`` header, and the answers Azure gives
instead of the model (401, 408, 424, 429) raised as BackendError saying what to change."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from tdsp_deploy.backends.azureml.translate import scoring_error
from tdsp_deploy.backends.base import PIN_HEADER
from tdsp_deploy.errors import BackendError

if TYPE_CHECKING:
    from tdsp_deploy.backends.azureml.client import AzureMLClient
    from tdsp_deploy.backends.azureml.target import AzureMLTarget
    from tdsp_deploy.backends.base import Caller, InvokeResult



def scoring_callers(
    client: AzureMLClient, target: AzureMLTarget, endpoint_name: str, slot: str | None
) -> AbstractContextManager[Iterator[Caller]]:
    """Callers of the endpoint's scoring URI, pinned to ``slot`` when it is given."""
    endpoint = client.get_endpoint(endpoint_name)
    if not endpoint.scoring_uri:
        raise BackendError(
            f"endpoint '{endpoint_name}' has no scoring URI yet ({endpoint.provisioning_state})",
            hint="wait until it is provisioned (tdsp-deploy status)",
        )
    keys = client.get_keys(endpoint_name)
    secret = keys.get("primary_key") or keys.get("access_token")
    if not secret:
        raise BackendError(f"Azure returned no key or token for endpoint '{endpoint_name}'")
    headers = {"Authorization": f"Bearer {secret}"}
    if slot:
        headers[PIN_HEADER] = slot
    settings = target.request_settings

    def explain(result: InvokeResult) -> BackendError | None:
        return scoring_error(
            result.status,
            result.headers,
            endpoint=endpoint_name,
            deployment=result.deployment or slot,
            request_timeout_ms=settings.request_timeout_ms,
            max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
            instance_count=target.instance_count,
        )

    return _checked_callers(
        endpoint.scoring_uri, headers, timeout=settings.request_timeout_ms / 1000 + 10, explain=explain
    )


class _CheckedCaller:
    """An HTTP caller whose answers Azure gave instead of the model raise, explained."""

    def __init__(self, caller: Caller, explain: Callable[[InvokeResult], BackendError | None]):
        self._caller = caller
        self._explain = explain

    def __call__(self, body: bytes) -> InvokeResult:
        result = self._caller(body)
        error = self._explain(result)
        if error is not None:
            raise error
        return result


@contextlib.contextmanager
def _checked_callers(
    url: str,
    headers: dict[str, str],
    *,
    timeout: float,
    explain: Callable[[InvokeResult], BackendError | None],
) -> Iterator[Iterator[Caller]]:
    from tdsp_deploy.http_caller import http_callers

    with http_callers(url, headers, timeout=timeout) as made:

        def checked() -> Iterator[Caller]:
            for caller in made:
                yield _CheckedCaller(caller, explain)

        yield checked()
