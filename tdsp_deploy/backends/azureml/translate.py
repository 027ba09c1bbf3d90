"""Azure's refusals in our words: the one place where what azure-core, azure-ai-ml and the
credential chain raise becomes ``tdsp_deploy.errors``, with a hint that says what to change
(``translate_error``); the scoring URI's own refusals get the same (``scoring_error``).

The service's error is read whole: its code and message and those of its ``details`` (a
refusal often says only "The request is invalid." at the top), the request it answered (a 404
is about what was asked for), and the HTTP status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from tdsp_deploy.errors import (
    BackendError,
    DeploymentFailed,
    EndpointNotFound,
    TdspError,
    UsageError,
)

QUOTA_DOCS = "https://learn.microsoft.com/azure/machine-learning/how-to-manage-quotas"


TROUBLESHOOTING_DOCS = (
    "https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints"
)


SIGN_IN_HINT = (
    "sign in with `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "for a service principal (DefaultAzureCredential also takes a managed identity)"
)


WORKSPACE_HINT = "check target.subscription_id, target.resource_group and target.workspace"


# Azure's defaults when request_settings are not given (reference-yaml-deployment-managed-online)
DEFAULT_REQUEST_TIMEOUT_MS = 5000


DEFAULT_MAX_CONCURRENT = 1


MAX_MESSAGE = 600


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


def _not_found(exc: BaseException, doing: Doing, where: str, text: str, details: dict[str, Any]) -> TdspError:
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


@contextlib.contextmanager
def translated(doing: Doing) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        translated = translate_error(exc, doing)
        if translated is None or translated is exc:
            raise
        raise translated from exc


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
