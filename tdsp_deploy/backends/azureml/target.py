"""The `azureml` target's schema: a managed online endpoint and one deployment per slot.

Keys are named as in the az ml CLI v2 YAML (managedOnlineEndpoint / managedOnlineDeployment
schemas), so a user who knows one knows the other. Every Azure ML limit that can be checked
without reaching Azure is checked here, with a message that says how to fix it; limits that
Azure raises on request (quotas) are warnings from ``azureml_warnings``, never errors.

This module imports only pydantic and the standard library: ``tdsp-deploy validate`` and
``schema`` load it, and must not pay for azure-ai-ml.

Sources (learn.microsoft.com/azure/machine-learning/...):
- how-to-manage-quotas, "Azure Machine Learning online endpoints and batch endpoints": names,
  50 instances per deployment (raisable), 180 s request time-out, the 20% upgrade reserve;
- reference-yaml-endpoint-online, reference-yaml-deployment-managed-online: keys, allowed
  values, defaults, probe minimums, liveness success_threshold fixed at 1;
- reference-managed-online-endpoints-vm-sku-list: the supported instance types;
- reference-yaml-environment: a conda file needs an image;
- azure-resource-manager tag-resources / resource-name-rules: tags, resource group, workspace.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from tdsp_deploy.manifest.model import Strict, Text

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase

#: Base image when the manifest names none: the one Azure ML's own examples build on.
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"

#: The package that serves score.py in the container; Azure ML refuses to start without it
#: ("A required package azureml-inference-server-http is missing").
INFERENCE_SERVER = "azureml-inference-server-http"
#: Requirements that bring the inference server with them.
SERVER_PROVIDERS = frozenset({"azureml-inference-server-http", "azureml-defaults"})

MAX_REQUEST_TIMEOUT_MS = 180_000  # managed online endpoints (not prompt flow)
MAX_INSTANCES = 50  # per deployment by default; Azure raises it on request
MAX_TAGS = 50
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
TAG_NAME_FORBIDDEN = "<>%&\\?/"
#: Tags whose names start with this are written by tdsp-deploy itself (package id, model hash).
TAG_PREFIX = "tdsp-deploy-"

#: Variables Azure ML sets in the container; a manifest value would be overridden.
PLATFORM_VARIABLES = frozenset({"AZUREML_MODEL_DIR", "AZUREML_ENTRY_SCRIPT", "AML_APP_ROOT"})

#: reference-managed-online-endpoints-vm-sku-list (compared without case).
SUPPORTED_INSTANCE_TYPES = frozenset(
    name.upper()
    for name in (
        *(f"Standard_D{n}as_v4" for n in (2, 4, 8, 16, 32, 48, 64, 96)),
        *(f"Standard_D{n}a_v4" for n in (2, 4, 8, 16, 32, 48, 64, 96)),
        *(f"Standard_DS{n}_v2" for n in (1, 2, 3, 4, 5)),
        *(f"Standard_E{n}s_v3" for n in (2, 4, 8, 16, 32, 48, 64)),
        *(f"Standard_F{n}s_v2" for n in (2, 4, 8, 16, 32, 48, 64, 72)),
        *(f"Standard_FX{n}mds" for n in (4, 12, 24, 36, 48)),
        *(f"Standard_L{n}as_v3" for n in (8, 16, 32, 48, 64, 80)),
        *(f"Standard_L{n}s_v2" for n in (8, 16, 32, 48, 64, 80)),
        *(f"Standard_L{n}s_v3" for n in (8, 16, 32, 48, 64, 80)),
        *(f"Standard_NC{n}ads_A100_v4" for n in (24, 48, 96)),
        *(f"Standard_NC{n}as_T4_v3" for n in (4, 8, 16, 64)),
        *(f"Standard_NC{n}s_v2" for n in (6, 12, 24)),
        *(f"Standard_NC{n}s_v3" for n in (6, 12, 24)),
        "Standard_NC40ads_H100_v5",
        "Standard_NC80adis_H100_v5",
        "Standard_ND96amsr_A100_v4",
        "Standard_ND96asr_v4",
        "Standard_ND40rs_v2",
        "Standard_ND96is_H100_v5",
        "Standard_ND96isr_H100_v5",
        *(f"Standard_NV{n}ads_A10_v5" for n in (6, 12, 18, 36, 72)),
        "Standard_NV36adms_A10_v5",
    )
)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Azure's rules for the names of what the target points at, and what to write instead.
_NAMES = {
    "resource_group": (
        re.compile(r"^[-\w.()]{0,89}[-\w()]$"),
        "must be an Azure resource group name: 1-90 letters, digits, '_', '-', '.', '(' or ')', "
        "not ending with '.'; `az group list -o table` lists yours",
    ),
    "workspace": (
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$"),
        "must be an Azure ML workspace name: 3-33 letters, digits, '-' or '_', starting with "
        "a letter or digit; `az ml workspace list -o table` lists yours",
    ),
    "instance_type": (
        re.compile(r"^[A-Za-z][A-Za-z0-9_]*$"),
        "must be a VM size such as Standard_DS3_v2 (letters, digits and '_'); see Azure ML's "
        "managed online endpoints SKU list",
    ),
}
# What Azure ML accepts for endpoint and deployment names (azure-ai-ml's
# EndpointConfigurations.NAME_REGEX_PATTERN, plus the 3-32 length of the quota page).
AZURE_ENDPOINT_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


# --- sub-sections --------------------------------------------------------------------------


class RequestSettings(Strict):
    """Scoring request settings of the deployment (az ml: ``request_settings``)."""

    request_timeout_ms: int = Field(
        default=5000,
        ge=1,
        json_schema_extra={"maximum": MAX_REQUEST_TIMEOUT_MS},
        description="Scoring time-out in milliseconds; at most 180000 on managed online endpoints.",
    )
    max_concurrent_requests_per_instance: int = Field(
        default=1,
        ge=1,
        description="Requests one instance handles at once; more are refused with 429. "
        "Set WORKER_COUNT in environment.variables to match.",
    )
    max_queue_wait_ms: int | None = Field(
        default=None,
        ge=0,
        description="Deprecated by Azure ML: raise request_timeout_ms instead.",
    )

    @field_validator("request_timeout_ms")
    @classmethod
    def _timeout_within_limit(cls, value: int) -> int:
        if value > MAX_REQUEST_TIMEOUT_MS:
            raise ValueError(
                f"must be <= {MAX_REQUEST_TIMEOUT_MS} (180 s, the request time-out limit of "
                "Azure ML managed online endpoints); make scoring faster or send smaller batches"
            )
        return value


class ProbeSettings(Strict):
    """A liveness or readiness probe (az ml: ``liveness_probe`` / ``readiness_probe``).

    Defaults are Azure ML's; a probe section that is left out is not sent at all."""

    initial_delay: int = Field(
        default=10, ge=1, description="Seconds after the container starts before the first probe."
    )
    period: int = Field(default=10, ge=1, description="Seconds between probes.")
    timeout: int = Field(default=2, ge=1, description="Seconds after which one probe fails.")
    success_threshold: int = Field(
        default=1, ge=1, description="Successes in a row that count as healthy (liveness: always 1)."
    )
    failure_threshold: int = Field(
        default=30, ge=1, description="Failures in a row before a restart (liveness) or unready."
    )


def _check_tag_name(name: str) -> str:
    # Checked per key, so that an error points at the line of the bad tag.
    if not name:
        raise ValueError("a tag name cannot be empty")
    if len(name) > MAX_TAG_NAME:
        raise ValueError(f"a tag name has at most {MAX_TAG_NAME} characters (Azure resource tags)")
    if name.startswith(TAG_PREFIX):
        raise ValueError(f"tag names starting with '{TAG_PREFIX}' are reserved for what tdsp-deploy records")
    bad = sorted({c for c in name if c in TAG_NAME_FORBIDDEN})
    if bad:
        raise ValueError(
            f"Azure tag names cannot contain {' '.join(bad)} (none of < > % & \\ ? /); rename the tag"
        )
    return name


def _check_tag_value(value: str) -> str:
    if len(value) > MAX_TAG_VALUE:
        raise ValueError(f"a tag value has at most {MAX_TAG_VALUE} characters (Azure resource tags)")
    return value


TagName = Annotated[str, AfterValidator(_check_tag_name)]
TagValue = Annotated[Text, AfterValidator(_check_tag_value)]


# --- the target ----------------------------------------------------------------------------


class AzureMLTarget(Strict):
    """Azure Machine Learning: a managed online endpoint, one deployment per slot."""

    kind: Literal["azureml"]
    subscription_id: str = Field(description="Azure subscription id, e.g. ${AZURE_SUBSCRIPTION_ID}.")
    resource_group: str = Field(description="Resource group of the workspace, e.g. ${AZURE_RESOURCE_GROUP}.")
    workspace: str = Field(description="Azure ML workspace name, e.g. ${AZURE_ML_WORKSPACE}.")
    instance_type: str = Field(
        default="Standard_DS3_v2",
        description="VM size of each instance (see Azure ML's managed online endpoints SKU list).",
    )
    instance_count: int = Field(
        default=1,
        ge=1,
        description="Instances of each deployment; Azure ML recommends at least 3 in production and "
        "reserves 20% more quota for upgrades.",
    )
    auth_mode: Literal["key", "aml_token", "aad_token"] = Field(
        default="key", description="How callers authenticate to the endpoint."
    )
    public_network_access: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="disabled: the endpoint is reachable only through the workspace's private endpoint.",
    )
    egress_public_network_access: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="Legacy network isolation of the deployment's outbound traffic.",
    )
    app_insights_enabled: bool = Field(
        default=False, description="Send the deployment's logs and metrics to the workspace's App Insights."
    )
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    liveness_probe: ProbeSettings | None = Field(default=None, description="Default: Azure ML's.")
    readiness_probe: ProbeSettings | None = Field(default=None, description="Default: Azure ML's.")
    tags: dict[TagName, TagValue] = Field(
        default_factory=dict, description="Azure tags for the endpoint and its deployments."
    )
    timeout: float = Field(
        default=1800,
        gt=0,
        le=86_400,
        description="Seconds allowed for each Azure ML operation of a push (creating the endpoint, "
        "the deployment, a traffic change); Azure's own limit is 30 minutes per operation.",
    )

    @field_validator("subscription_id")
    @classmethod
    def _subscription_is_guid(cls, value: str) -> str:
        if not _GUID.fullmatch(value.strip()):
            raise ValueError(
                "must be an Azure subscription id, a GUID like 00000000-0000-0000-0000-000000000000; "
                "`az account show --query id -o tsv` prints yours"
            )
        return value.strip()

    @field_validator(*_NAMES)
    @classmethod
    def _azure_name(cls, value: str, info: ValidationInfo) -> str:
        pattern, rule = _NAMES[info.field_name or ""]
        if not pattern.fullmatch(value):
            raise ValueError(rule)
        return value

    @field_validator("liveness_probe")
    @classmethod
    def _liveness_succeeds_once(cls, value: ProbeSettings | None) -> ProbeSettings | None:
        if value is not None and value.success_threshold != 1:
            raise ValueError(
                "success_threshold of the liveness probe is fixed at 1 by Azure ML; remove it "
                "(it may be set on the readiness probe)"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _not_too_many_tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise ValueError(
                f"Azure allows at most {MAX_TAGS} tags per resource, got {len(value)}; "
                "merge some into one tag whose value is JSON"
            )
        return value


# --- checks that need the whole manifest ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem or warning about a manifest on Azure ML, at the manifest field it concerns."""

    field: tuple[str | int, ...]  # e.g. ("rollout", "deployment"); () for the manifest itself
    message: str
    severity: Literal["error", "warning"] = "error"

    def render(self) -> str:
        where = ".".join(str(part) for part in self.field)
        return f"{where}: {self.message}" if where else self.message


def azureml_findings(manifest: ManifestBase) -> list[Finding]:
    """Everything ``check_manifest_for_azureml`` and ``azureml_warnings`` report, located."""
    # Names need no check here: the manifest's name patterns are Azure's (no trailing '-').
    return [*_environment_findings(manifest), *_target_findings(manifest)]


def check_manifest_for_azureml(manifest: ManifestBase) -> list[str]:
    """Problems that make the manifest unusable on Azure ML and that need more than the target
    section to see (``field: message`` lines; empty when there are none)."""
    return [f.render() for f in azureml_findings(manifest) if f.severity == "error"]


def azureml_warnings(manifest: ManifestBase) -> list[str]:
    """Things that work but deserve a look: the default image stands in, a quota will be needed."""
    return [f.render() for f in azureml_findings(manifest) if f.severity == "warning"]


def _environment_findings(manifest: ManifestBase) -> list[Finding]:
    env = manifest.environment
    findings = []
    if manifest.model.flavor == "mlflow" and manifest.scoring is None:
        # No-code deployment: Azure ML builds the environment from the model's MLmodel file.
        return [
            Finding(
                (("environment", field)),
                "ignored: Azure ML serves an MLflow model with the "
                "environment its MLmodel file describes (no-code deployment)",
                "warning",
            )
            for field in ("image", "requirements", "conda_file")
            if getattr(env, field) is not None
        ]
    if env.image is None:
        findings.append(
            Finding(
                ("environment", "image"),
                f"not given; Azure ML builds the environment on {DEFAULT_IMAGE}",
                "warning",
            )
        )
    if env.requirements is not None:
        try:
            lines = read_requirements(env.requirements)
        except (ValueError, OSError) as exc:
            message = str(exc) if isinstance(exc, ValueError) else f"cannot be read: {exc.strerror or exc}"
            findings.append(Finding(("environment", "requirements"), message))
        else:
            if not any(requirement_name(line) in SERVER_PROVIDERS for line in lines):
                findings.append(
                    Finding(
                        ("environment", "requirements"),
                        f"{INFERENCE_SERVER} is not listed; it is added to the environment, because "
                        "Azure ML serves score.py with it",
                        "warning",
                    )
                )
    elif env.conda_file is not None:
        try:
            conda_text = env.conda_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            findings.append(Finding(("environment", "conda_file"), f"cannot be read: {exc.strerror or exc}"))
            conda_text = INFERENCE_SERVER  # reported above; no second finding
        if not _conda_file_names_server(conda_text):
            findings.append(
                Finding(
                    ("environment", "conda_file"),
                    f"does not list {INFERENCE_SERVER} (or azureml-defaults); Azure ML will not start "
                    "the deployment without it: add it under the pip dependencies",
                    "warning",
                )
            )
    elif env.image is not None:
        findings.append(
            Finding(
                ("environment", "image"),
                f"used as it is (no requirements or conda_file): it must already hold {INFERENCE_SERVER} "
                "and every package score.py imports",
                "warning",
            )
        )
    for name in sorted(set(env.variables) & PLATFORM_VARIABLES):
        findings.append(
            Finding(("environment", "variables", name), "is set by Azure ML in the container", "warning")
        )
    return findings


def _target_findings(manifest: ManifestBase) -> list[Finding]:
    target = manifest.target  # type: ignore[attr-defined]
    if not isinstance(target, AzureMLTarget):
        return []
    findings = []
    if target.instance_type.upper() not in SUPPORTED_INSTANCE_TYPES:
        findings.append(
            Finding(
                ("target", "instance_type"),
                f"{target.instance_type} is not in Azure ML's list of VM sizes for managed online "
                "endpoints; the deployment may be refused",
                "warning",
            )
        )
    if target.instance_count > MAX_INSTANCES:
        findings.append(
            Finding(
                ("target", "instance_count"),
                f"above Azure ML's default limit of {MAX_INSTANCES} instances per deployment; "
                "request a limit increase first",
                "warning",
            )
        )
    if target.request_settings.max_queue_wait_ms is not None:
        findings.append(
            Finding(
                ("target", "request_settings", "max_queue_wait_ms"),
                "deprecated by Azure ML for managed online endpoints; raise request_timeout_ms instead",
                "warning",
            )
        )
    return findings


# --- requirements files (shared with entities.py, which turns them into a conda file) -------

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LONG_INCLUDES = ("--requirement", "--constraint", "--editable")


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file, without comments and blank lines.

    ValueError (with ``file:line``) for lines a conda file's pip section cannot carry: includes
    of other files and editable installs, which would not be shipped with the environment."""
    file = Path(path)
    text = file.read_text(encoding="utf-8-sig")
    lines: list[str] = []
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        option = line.split(maxsplit=1)[0].split("=", 1)[0]
        if option in _LONG_INCLUDES or (line[:1] == "-" and line[1:2] in ("r", "c", "e")):
            raise ValueError(
                f"{file.name}:{number}: '{line}' refers to a file or folder that is not shipped to "
                "Azure ML; list the requirements themselves in this file"
            )
        lines.append(line)
    return lines


def requirement_name(line: str) -> str | None:
    """The normalized distribution name a requirement line asks for (None for options)."""
    if line.startswith("-"):
        return None
    match = _NAME.match(line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def _conda_file_names_server(text: str) -> bool:
    names = {re.sub(r"[-_.]+", "-", word).lower() for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)}
    return bool(names & SERVER_PROVIDERS)
