"""``tdsp-deploy import``: an az ml CLI v2 endpoint + deployment YAML pair, as a manifest.

Both files are read with azure-ai-ml's own loaders, so YAML that ``az ml`` would refuse is
refused here with the SDK's message. What the manifest can say is mapped; what it cannot
(registered models, custom containers) is a UsageError; what it can do without (a registered
environment, a description, data collection) is dropped with a warning, so the user knows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tdsp_deploy.backends.azureml import import_rehearsal
from tdsp_deploy.backends.azureml.entities import sdk_error_text
from tdsp_deploy.backends.azureml.target import TAG_PREFIX, AzureMLTarget
from tdsp_deploy.errors import UsageError
from tdsp_deploy.manifest.model import DEPLOYMENT_NAME, ENDPOINT_NAME, ENV_VAR_NAME, MODEL_NAME

#: Placeholders the loader fills in from the environment (DESIGN.md: ``${VAR}``); the az ml
#: YAML does not say which workspace it is for.
WORKSPACE_PLACEHOLDERS = {
    "subscription_id": "${AZURE_SUBSCRIPTION_ID}",
    "resource_group": "${AZURE_RESOURCE_GROUP}",
    "workspace": "${AZURE_ML_WORKSPACE}",
}
_SAMPLE_WORKSPACE = {
    "subscription_id": "00000000-0000-0000-0000-000000000000",
    "resource_group": "resource-group",
    "workspace": "workspace",
}
_REMOTE = re.compile(r"^(azureml:|https?://|wasbs?://|abfss?://|adl://|/subscriptions/)", re.IGNORECASE)
_PROBE_KEYS = ("initial_delay", "period", "timeout", "success_threshold", "failure_threshold")
_REQUEST_KEYS = ("request_timeout_ms", "max_concurrent_requests_per_instance", "max_queue_wait_ms")


def import_az_ml(
    endpoint_yml: Path,
    deployment_yml: Path,
    out_dir: Path,
    *,
    subscription_id: str | None = None,
    resource_group: str | None = None,
    workspace: str | None = None,
    target_kind: str = "azureml",
    request: Path | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A manifest document (plain data, for the CLI to write as YAML into ``out_dir``) and the
    warnings about what could not be carried over.

    Paths in the document are relative to ``out_dir`` when they lie inside it, absolute
    otherwise (a manifest's relative paths may not leave its folder). The workspace settings
    default to ``${AZURE_SUBSCRIPTION_ID}``, ``${AZURE_RESOURCE_GROUP}`` and
    ``${AZURE_ML_WORKSPACE}``. Raises UsageError for YAML that azure-ai-ml refuses and for
    deployments a manifest cannot describe.
    """
    endpoint_yml, deployment_yml = Path(endpoint_yml), Path(deployment_yml)
    out_dir = Path(out_dir).absolute()
    by_name = import_rehearsal.is_endpoint_name(endpoint_yml)
    if not by_name:
        import_rehearsal.check_placeholders(endpoint_yml)
    import_rehearsal.check_placeholders(deployment_yml, given=("endpoint_name",))
    endpoint = _named_endpoint(str(endpoint_yml)) if by_name else _load(endpoint_yml, "endpoint")
    deployment = _load(deployment_yml, "deployment")
    _check_kinds(endpoint, deployment, endpoint_yml, deployment_yml)
    warnings: list[str] = []
    base = deployment_yml.absolute().parent

    name = _endpoint_name(endpoint.name, endpoint_yml, warnings)
    manifest: dict[str, Any] = {"name": name}
    manifest["model"] = _model(deployment, base, out_dir, deployment_yml, warnings)
    scoring = _scoring(deployment, base, out_dir, deployment_yml)
    if scoring is not None:
        manifest["scoring"] = scoring
    else:  # a no-code MLflow deployment: the manifest's mlflow flavor generates the script
        manifest["model"]["flavor"] = "mlflow"
    environment = _environment(deployment, name, base, out_dir, deployment_yml, warnings)
    if environment:
        manifest["environment"] = environment
    workspace_settings = {
        "subscription_id": subscription_id,
        "resource_group": resource_group,
        "workspace": workspace,
    }
    manifest["target"] = _target(endpoint, deployment, workspace_settings, warnings, deployment_yml)
    if target_kind == "local":  # no workspace: its placeholders and their warning go
        azure_target = {k: v for k, v in manifest["target"].items() if k not in WORKSPACE_PLACEHOLDERS}
        warnings[:] = [w for w in warnings if not w.startswith("target: the workspace is read from")]
        manifest["target"] = import_rehearsal.local_target(azure_target, warnings)
        manifest.get("environment", {}).pop("image", None)  # a local deployment runs no image
    smoke = import_rehearsal.smoke_test(
        request,
        [deployment_yml.absolute().parent, *([] if by_name else [endpoint_yml.absolute().parent])],
        out_dir,
        warnings,
        names=(str(deployment.name), deployment_yml.stem),
    )
    if smoke:
        manifest["smoke_test"] = smoke
    rollout = _rollout(endpoint, deployment, warnings)
    if rollout:
        manifest["rollout"] = rollout
    warnings.extend(_dropped(endpoint, deployment))
    return manifest, warnings


# --- reading ----------------------------------------------------------------------------------


def _load(path: Path, what: str) -> Any:
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    load = load_online_endpoint if what == "endpoint" else load_online_deployment
    if not path.is_file():
        raise UsageError(f"{path}: no such file", hint=f"give the az ml {what} YAML file")
    try:
        return load(path)
    except Exception as exc:  # azure-ai-ml raises marshmallow, its own and YAML errors alike
        page = (
            "reference-yaml-endpoint-online"
            if what == "endpoint"
            else "reference-yaml-deployment-managed-online"
        )
        raise UsageError(
            f"{path}: azure-ai-ml cannot read it as an online {what}: {sdk_error_text(exc)}",
            hint=f"see the az ml YAML reference: https://learn.microsoft.com/azure/machine-learning/{page}",
        ) from None


def _named_endpoint(name: str) -> Any:
    """The endpoint ``az ml online-endpoint create -n NAME`` makes: managed, key auth."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=name, auth_mode="key")


def _check_kinds(endpoint: Any, deployment: Any, endpoint_yml: Path, deployment_yml: Path) -> None:
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    if not isinstance(endpoint, ManagedOnlineEndpoint):
        raise UsageError(
            f"{endpoint_yml}: a Kubernetes online endpoint; "
            "the azureml target deploys managed online endpoints",
            hint="remove `compute:` to make it a managed online endpoint",
        )
    if not isinstance(deployment, ManagedOnlineDeployment):
        raise UsageError(
            f"{deployment_yml}: a Kubernetes online deployment; the azureml target deploys managed ones",
            hint="remove `type: kubernetes` and give instance_type as a VM size",
        )
    placeholder = re.fullmatch(r"<[^>]*>|\{\{[^}]*\}\}", str(deployment.endpoint_name or "").strip())
    if placeholder:  # the endpoint given names it, as `az ml ... --set endpoint_name=` would
        deployment.endpoint_name = endpoint.name
    if deployment.endpoint_name and deployment.endpoint_name.lower() != (endpoint.name or "").lower():
        raise UsageError(
            f"{deployment_yml}: endpoint_name '{deployment.endpoint_name}' is not the endpoint "
            f"'{endpoint.name}' of {endpoint_yml.name}",
            hint="give the deployment of that endpoint",
        )


# --- sections ---------------------------------------------------------------------------------


def _endpoint_name(name: str, source: Path, warnings: list[str]) -> str:
    lowered = name.lower()
    if lowered != name:
        warnings.append(f"name: '{name}' becomes '{lowered}' (manifest names are lower case)")
    if not re.fullmatch(ENDPOINT_NAME, lowered):
        raise UsageError(f"{source}: endpoint name '{name}' is not 3-32 characters of a-z, 0-9 and '-'")
    return lowered


def _model(deployment: Any, base: Path, out_dir: Path, source: Path, warnings: list[str]) -> dict[str, Any]:
    model = deployment.model
    if model is None:
        raise UsageError(
            f"{source}: no model; deployments without one (custom containers) have no manifest form",
            hint="add `model: {path: ...}` with the local model file or folder",
        )
    if isinstance(model, str):
        beside = import_rehearsal.registered_model_beside(model, base, warnings)
        if beside is not None:
            beside["path"] = _manifest_path(beside["path"], base, out_dir, source, "model.path")
            if not re.fullmatch(MODEL_NAME, beside["name"]):
                del beside["name"]
            return beside
        raise UsageError(
            f"{source}: model '{_reference(model)}' is registered in a workspace; "
            "a manifest deploys a local model",
            hint=_download_hint(model),
        )
    path = str(model.path or "")
    if not path or _REMOTE.match(path):
        raise UsageError(
            f"{source}: model path '{path}' is not a local file or folder",
            hint="download the model and give its local path",
        )
    section: dict[str, Any] = {"path": _manifest_path(path, base, out_dir, source, "model.path")}
    no_code = deployment.code_configuration is None and str(model.type or "").lower() == "mlflow_model"
    if model.type and model.type != "custom_model" and not no_code:
        warnings.append(f"model: type {model.type} is deployed as custom_model, with the scoring script")
    if not getattr(model, "_is_anonymous", False):  # an unnamed model gets a hash as its name
        if model.name and re.fullmatch(MODEL_NAME, model.name):
            section["name"] = model.name
        if model.version:
            section["version"] = str(model.version)
    return section


def _reference(value: str) -> str:
    """A registered asset as the user wrote it: azure-ai-ml drops the ``azureml:`` prefix."""
    if value.startswith(("azureml:", "/")) or "://" in value:
        return value
    return f"azureml:{value}"


def _download_hint(reference: str) -> str:
    match = re.fullmatch(r"^(?:azureml:)?([^:/@]+)[:@]([^:/]+)$", reference)
    if match:
        return (
            f"download it (az ml model download --name {match.group(1)} --version {match.group(2)}) "
            "and give model.path"
        )
    return "download it (az ml model download) and give model.path"


def _scoring(deployment: Any, base: Path, out_dir: Path, source: Path) -> dict[str, Any] | None:
    code = deployment.code_configuration
    model_type = str(getattr(deployment.model, "type", "") or "").lower()
    if code is None and model_type == "mlflow_model":
        return None
    if code is None or not code.scoring_script:
        raise UsageError(
            f"{source}: no code_configuration; a manifest needs the scoring script (init() and run()); "
            "custom-container deployments have no manifest form (a no-code deployment needs an MLflow model)",
            hint="add code_configuration: {code: ..., scoring_script: score.py}",
        )
    section: dict[str, Any] = {"script": Path(str(code.scoring_script)).as_posix()}
    if code.code:
        if not isinstance(code.code, (str, os.PathLike)) or _REMOTE.match(str(code.code)):
            raise UsageError(
                f"{source}: code '{code.code}' is a registered code asset, not a local folder",
                hint="give code_configuration.code as the local folder of the scoring script",
            )
        section = {"code": _manifest_path(str(code.code), base, out_dir, source, "code"), **section}
    return section


def _environment(
    deployment: Any, name: str, base: Path, out_dir: Path, source: Path, warnings: list[str]
) -> dict[str, Any]:
    section: dict[str, Any] = {}
    environment = deployment.environment
    if isinstance(environment, str):
        warnings.append(
            f"environment: '{_reference(environment)}' is a registered environment and is not carried over; "
            "give environment.image and a requirements or conda_file"
        )
    elif environment is not None:
        if environment.build is not None:
            warnings.append(
                "environment: a Docker build context is not carried over; build and push the image, "
                "then give it as environment.image"
            )
        if environment.image:
            section["image"] = environment.image
        conda_path = getattr(environment, "_conda_file_path", None)
        if conda_path:
            section["conda_file"] = _manifest_path(str(conda_path), base, out_dir, source, "conda_file")
        elif environment.conda_file:
            warnings.append(
                "environment: the inline conda_file is not carried over; save it as a file and give "
                "environment.conda_file"
            )
        if getattr(environment, "inference_config", None):
            warnings.append("environment: inference_config (custom container routes) is not carried over")
        if (
            environment.name
            and not getattr(environment, "_is_anonymous", False)
            and environment.name != f"{name}-env"
        ):
            warnings.append(
                f"environment: the name '{environment.name}' is not kept; tdsp-deploy names it "
                f"'{name}-env' and versions it by content"
            )
    variables = dict(deployment.environment_variables or {})
    for key in variables:
        if not ENV_VAR_NAME.fullmatch(str(key)):
            raise UsageError(
                f"{source}: environment_variables: '{key}' is not a valid variable name",
                hint="use letters, digits and '_', not a digit first",
            )
    if variables:
        section["variables"] = {str(k): _text(v) for k, v in variables.items()}
    return section


def _target(
    endpoint: Any,
    deployment: Any,
    workspace_settings: dict[str, str | None],
    warnings: list[str],
    source: Path,
) -> dict[str, Any]:
    target: dict[str, Any] = {"kind": "azureml"}
    placeholders = []
    for key, value in workspace_settings.items():
        if value is None:
            placeholders.append(WORKSPACE_PLACEHOLDERS[key])
        target[key] = value if value is not None else WORKSPACE_PLACEHOLDERS[key]
    if placeholders:
        warnings.append(
            f"target: the workspace is read from {', '.join(placeholders)}; set them, or write the values"
        )
    if deployment.instance_type:
        target["instance_type"] = deployment.instance_type
    if deployment.instance_count is not None:
        target["instance_count"] = deployment.instance_count
    if endpoint.auth_mode:
        target["auth_mode"] = str(endpoint.auth_mode).lower()
    if endpoint.public_network_access:
        target["public_network_access"] = str(endpoint.public_network_access).lower()
    if deployment.egress_public_network_access:
        target["egress_public_network_access"] = str(deployment.egress_public_network_access).lower()
    if deployment.app_insights_enabled:
        target["app_insights_enabled"] = True
    request = _fields(deployment.request_settings, _REQUEST_KEYS)
    if request:
        target["request_settings"] = request
    for name in ("liveness_probe", "readiness_probe"):
        probe = _fields(getattr(deployment, name), _PROBE_KEYS)
        if probe:
            target[name] = probe
    tags = _tags(endpoint.tags, deployment.tags, warnings)
    if tags:
        target["tags"] = tags
    _check_target(target, source)
    return target


def _fields(entity: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if entity is None:
        return {}
    return {key: getattr(entity, key) for key in keys if getattr(entity, key, None) is not None}


def _tags(endpoint_tags: Any, deployment_tags: Any, warnings: list[str]) -> dict[str, str]:
    # Tags tdsp-deploy sets itself (TAG_PREFIX) describe one push, not the user's settings.
    endpoint_tags = {
        str(k): _text(v) for k, v in (endpoint_tags or {}).items() if not str(k).startswith(TAG_PREFIX)
    }
    deployment_tags = {
        str(k): _text(v) for k, v in (deployment_tags or {}).items() if not str(k).startswith(TAG_PREFIX)
    }
    if endpoint_tags and deployment_tags and endpoint_tags != deployment_tags:
        warnings.append(
            "target.tags: the endpoint's and the deployment's tags are merged; "
            "a manifest gives both the same tags"
        )
    return {**endpoint_tags, **deployment_tags}


def _check_target(target: dict[str, Any], source: Path) -> None:
    """The target must validate as the manifest will; placeholders stand in for the workspace."""
    sample = {
        key: (_SAMPLE_WORKSPACE[key] if str(value).startswith("${") else value)
        for key, value in target.items()
        if key in _SAMPLE_WORKSPACE
    }
    try:
        AzureMLTarget.model_validate({**target, **sample})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False)
        )
        raise UsageError(
            f"{source}: settings Azure ML would refuse: {problems}",
            hint="fix them in the az ml YAML and import again",
        ) from None


def _rollout(endpoint: Any, deployment: Any, warnings: list[str]) -> dict[str, Any]:
    rollout: dict[str, Any] = {}
    slot = str(deployment.name).lower()
    if re.fullmatch(DEPLOYMENT_NAME, slot):
        rollout["deployment"] = slot
    else:
        warnings.append(
            f"rollout.deployment: '{deployment.name}' is not a slot name (3-32 of a-z, 0-9, '-'); "
            "the slot alternates between blue and green"
        )
    mirror = (endpoint.mirror_traffic or {}).get(deployment.name)
    traffic = (endpoint.traffic or {}).get(deployment.name)
    if mirror:
        rollout.update(traffic=0, mirror=int(mirror))
    elif traffic is not None:
        rollout["traffic"] = int(traffic)
    return rollout


def _dropped(endpoint: Any, deployment: Any) -> list[str]:
    dropped = []
    if endpoint.identity is not None:
        dropped.append("endpoint identity (the endpoint gets a system-assigned identity)")
    if endpoint.description or deployment.description:
        dropped.append("description")
    if deployment.data_collector is not None:
        dropped.append("data_collector")
    if deployment.model_mount_path:
        dropped.append("model_mount_path")
    scale = deployment.scale_settings
    if scale is not None and getattr(scale, "type", "default") not in (None, "default"):
        dropped.append("scale_settings (only the default scale type applies to managed deployments)")
    others = set(endpoint.traffic or {}) | set(endpoint.mirror_traffic or {})
    others.discard(deployment.name)
    if others:
        dropped.append(f"traffic to other deployments ({', '.join(sorted(others))})")
    return [f"not carried over: {what}" for what in dropped]


# --- helpers ----------------------------------------------------------------------------------


def _manifest_path(value: str, base: Path, out_dir: Path, source: Path, what: str) -> str:
    """A path of the az ml YAML (relative to its folder) as the manifest in ``out_dir`` says it."""
    path = Path(value)
    resolved = Path(os.path.normpath(path if path.is_absolute() else base / path))
    if not resolved.exists():
        raise UsageError(f"{source}: {what} '{value}' does not exist (looked for {resolved})")
    if resolved.is_relative_to(out_dir):
        return resolved.relative_to(out_dir).as_posix() or "."
    return str(resolved)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
