"""The manifest and its package as azure-ai-ml entities: what a push sends to Azure ML.

``build_*`` make the entities offline; ``validate_entities`` runs them through the SDK's own
checks (its marshmallow schemas, as ``az ml`` reads YAML, and the conversion to REST objects)
so that a mistake surfaces before anything is uploaded, as one of our errors.

azure-ai-ml is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from tdsp_deploy.backends.azureml.target import (
    AZURE_ENDPOINT_NAME,
    DEFAULT_IMAGE,
    INFERENCE_SERVER,
    SERVER_PROVIDERS,
    TAG_PREFIX,
    AzureMLTarget,
    read_requirements,
    requirement_name,
)
from tdsp_deploy.errors import BackendError, ManifestError, ManifestProblem

if TYPE_CHECKING:
    from azure.ai.ml.entities import Environment, ManagedOnlineDeployment, ManagedOnlineEndpoint, Model

    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

MODEL_TYPE = "custom_model"
MLFLOW_MODEL_TYPE = "mlflow_model"
#: Model tag holding the model's content hash: a model version is immutable on Azure ML, so
#: a client can tell "same version, other content" from "already registered".
MODEL_SHA256_TAG = f"{TAG_PREFIX}model-sha256"
#: Region given to the SDK's REST conversion when validating offline (the real one is the
#: workspace's, known only once connected).
OFFLINE_LOCATION = "offline"
_CONDA_CHANNELS = ["conda-forge"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _target(manifest: ManifestBase) -> AzureMLTarget:
    target = manifest.target  # type: ignore[attr-defined]
    if not isinstance(target, AzureMLTarget):
        raise BackendError(f"the manifest's target is '{target.kind}', not 'azureml'")
    return target


# --- entities ------------------------------------------------------------------------------


def build_endpoint(manifest: ManifestBase) -> ManagedOnlineEndpoint:
    """The managed online endpoint, without traffic: deployments get traffic once they exist."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    target = _target(manifest)
    return ManagedOnlineEndpoint(
        name=manifest.name,
        auth_mode=target.auth_mode,
        tags=dict(target.tags),
        public_network_access=target.public_network_access,
    )


def is_no_code(manifest: ManifestBase) -> bool:
    """An MLflow model without a scoring script: Azure ML's no-code deployment serves it, with
    the scoring script and environment Azure ML derives from its MLmodel file."""
    return manifest.model.flavor == "mlflow" and manifest.scoring is None


def build_model(manifest: ManifestBase, lock: PackageLock, model_path: Path) -> Model:
    """The model to register: name from the manifest, version from the lock (the content hash
    unless the manifest pins one), the local file or folder ``model_path`` to upload."""
    from azure.ai.ml.entities import Model

    return Model(
        name=manifest.model_name,
        version=lock.model_version,
        path=str(model_path),
        type=MLFLOW_MODEL_TYPE if manifest.model.flavor == "mlflow" else MODEL_TYPE,
        tags={MODEL_SHA256_TAG: lock.model.sha256},
    )


def build_environment(manifest: ManifestBase, lock: PackageLock, environment_dir: Path | None) -> Environment:
    """The environment: ``environment.image`` (or DEFAULT_IMAGE) plus a conda file.

    ``environment_dir`` is the unpacked package's ``environment/`` folder; None reads the files
    the manifest names. A pip requirements file becomes a conda file with the package's Python,
    pip and the requirements (plus the inference server when missing). The version hashes the
    image and the conda content, so an unchanged environment is found and reused, not rebuilt.
    """
    from azure.ai.ml.entities import Environment

    image = manifest.environment.image or DEFAULT_IMAGE
    spec = conda_spec(manifest, lock, environment_dir)
    return Environment(
        name=environment_name(manifest),
        version=environment_version(image, spec),
        image=image,
        conda_file=spec,
    )


def build_deployment(
    manifest: ManifestBase,
    slot: str,
    *,
    model: Model | str,
    environment: Environment | str | None,
    code_dir: Path | None,
    scoring_script: str | None,
    extra_tags: Mapping[str, str] | None = None,
) -> ManagedOnlineDeployment:
    """The deployment for ``slot``. ``model`` and ``environment`` are entities or registered
    references (``azureml:name:version`` or ARM ids); ``code_dir`` is the scoring folder and
    ``scoring_script`` the script's path inside it. ``extra_tags`` join the target's tags
    (for what the backend records, e.g. the package id). No environment and no code: a
    no-code deployment of an MLflow model (``is_no_code``)."""
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    target = _target(manifest)
    if not AZURE_ENDPOINT_NAME.fullmatch(slot) or not 3 <= len(slot) <= 32:
        raise ManifestError(
            [
                ManifestProblem(
                    None,
                    None,
                    "rollout.deployment",
                    f"'{slot}' is not an Azure ML deployment name: 3-32 letters, digits and '-', "
                    "starting with a letter and ending with a letter or digit",
                )
            ]
        )
    settings = target.request_settings
    tags = {**target.tags, **(extra_tags or {})}
    return ManagedOnlineDeployment(
        name=slot,
        endpoint_name=manifest.name,
        model=model,
        environment=environment,
        code_configuration=(
            CodeConfiguration(code=str(code_dir), scoring_script=scoring_script)
            if code_dir is not None
            else None
        ),
        instance_type=target.instance_type,
        instance_count=target.instance_count,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=settings.request_timeout_ms,
            max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
            max_queue_wait_ms=settings.max_queue_wait_ms,
        ),
        liveness_probe=_probe(target.liveness_probe),
        readiness_probe=_probe(target.readiness_probe),
        app_insights_enabled=target.app_insights_enabled,
        egress_public_network_access=target.egress_public_network_access,
        environment_variables=dict(manifest.environment.variables) or None,
        tags=tags,
    )


def _probe(probe: Any) -> Any:
    if probe is None:
        return None
    from azure.ai.ml.entities import ProbeSettings

    return ProbeSettings(**probe.model_dump())


# --- the environment's content ---------------------------------------------------------------


def environment_name(manifest: ManifestBase) -> str:
    return f"{manifest.name}-env"


def environment_version(image: str, spec: Mapping[str, Any] | None) -> str:
    """Content-derived: same image and conda content, same version (whatever the key order)."""
    document = json.dumps({"image": image, "conda": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def conda_spec(
    manifest: ManifestBase, lock: PackageLock, environment_dir: Path | None
) -> dict[str, Any] | None:
    """The conda file Azure ML builds on the image, as a mapping (None: the image alone).

    The manifest's conda file is taken as it is. A requirements file, or nothing at all on the
    default image, gives a generated one (the default image holds no inference server)."""
    env = manifest.environment
    source = _environment_file(manifest, lock, environment_dir)
    if source is not None and env.conda_file is not None:
        return _read_conda_file(source)
    if source is not None:
        try:
            requirements = read_requirements(source)
        except ValueError as exc:
            raise ManifestError([ManifestProblem(None, None, "environment.requirements", str(exc))]) from None
        except OSError as exc:
            raise BackendError(f"cannot read {source}: {exc.strerror or exc}") from None
        return _generated_spec(manifest, lock, requirements)
    if env.image is None:
        return _generated_spec(manifest, lock, [])
    return None


def _environment_file(manifest: ManifestBase, lock: PackageLock, environment_dir: Path | None) -> Path | None:
    env = manifest.environment
    declared = env.conda_file or env.requirements
    if declared is None:
        return None
    if environment_dir is None:
        return Path(declared)
    archived = next(iter((lock.environment or {}).values()), None)
    if archived is None:
        raise BackendError(
            "the package holds no environment file but the manifest names one",
            hint="build the package again (tdsp-deploy package MANIFEST)",
        )
    # environment_dir is the package's environment/ folder; the package root is accepted too.
    for candidate in (environment_dir / PurePosixPath(archived).name, environment_dir / archived):
        if candidate.is_file():
            return candidate
    raise BackendError(f"{archived} is missing from the unpacked package in {environment_dir}")


def _read_conda_file(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(
            [ManifestProblem(None, None, "environment.conda_file", f"{path.name} is not valid YAML: {exc}")]
        ) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("dependencies"), list):
        raise ManifestError(
            [
                ManifestProblem(
                    None,
                    None,
                    "environment.conda_file",
                    f"{path.name} is not a conda environment file: it needs a 'dependencies' list",
                )
            ]
        )
    return spec


def _generated_spec(manifest: ManifestBase, lock: PackageLock, requirements: list[str]) -> dict[str, Any]:
    pip = list(requirements)
    if not any(requirement_name(line) in SERVER_PROVIDERS for line in pip):
        pip.append(INFERENCE_SERVER)
    python = ".".join(lock.python.split(".")[:2])  # the Python the package was built and tested with
    return {
        "name": environment_name(manifest),
        "channels": list(_CONDA_CHANNELS),
        "dependencies": [f"python={python}", "pip", {"pip": pip}],
    }


# --- validation through the SDK ----------------------------------------------------------------


def validate_entities(*entities: Any) -> None:
    """Put each entity through azure-ai-ml's own checks, offline: its YAML schema (the path
    ``az ml`` takes) and its conversion to the REST object that would be sent.

    A value the SDK refuses raises ManifestError (the manifest must change); anything else it
    raises is a BackendError, since it means the SDK and this backend disagree."""
    for entity in entities:
        what = _describe(entity)
        try:
            _check(entity)
        except Exception as exc:  # the SDK raises many types; all are translated here
            raise _translate(exc, what) from exc


def _check(entity: Any) -> None:
    from azure.ai.ml.entities import Environment, ManagedOnlineDeployment, ManagedOnlineEndpoint, Model

    if isinstance(entity, ManagedOnlineEndpoint):
        ManagedOnlineEndpoint._load(data=_plain(entity._to_dict()))
        entity._to_rest_online_endpoint(OFFLINE_LOCATION)
    elif isinstance(entity, ManagedOnlineDeployment):
        ManagedOnlineDeployment._load(data=_plain(entity._to_dict()))
        entity._to_rest_object(OFFLINE_LOCATION)
    elif isinstance(entity, (Model, Environment)):
        type(entity)._load(data=_plain(entity._to_dict()))
        entity._to_rest_object()
    else:
        raise TypeError(f"not an azure-ai-ml entity this backend sends: {type(entity).__name__}")


def _plain(document: Any) -> Any:
    # The SDK's dumps hold OrderedDicts; schemas and YAML want plain mappings.
    return json.loads(json.dumps(document))


def _describe(entity: Any) -> str:
    kind = type(entity).__name__
    name = getattr(entity, "name", None)
    version = getattr(entity, "version", None)
    label = f"{name}:{version}" if name and version else name or "?"
    return f"{kind} '{label}'"


def _translate(exc: Exception, what: str) -> Exception:
    from azure.ai.ml.exceptions import MlException
    from marshmallow import ValidationError as SchemaError

    if isinstance(exc, (ManifestError, BackendError)):
        return exc
    # Offline, the SDK raises MlException (ValidationException among them) only for content.
    if isinstance(exc, (SchemaError, MlException)):
        return ManifestError(
            f"azure-ai-ml refuses the {what}: {sdk_error_text(exc)}",
            hint="fix the manifest value named (target settings use the az ml YAML keys)",
        )
    return BackendError(
        f"azure-ai-ml could not check the {what}: {type(exc).__name__}: {exc}",
        hint="this is a disagreement between tdsp-deploy and the installed azure-ai-ml; "
        "report it with `pip show azure-ai-ml`",
    )


def sdk_error_text(exc: BaseException) -> str:
    """One line saying what azure-ai-ml refused: field paths and messages, without the long
    decorated text its loaders add (JSON dumps, links to VS Code)."""
    from marshmallow import ValidationError as SchemaError

    if isinstance(exc, SchemaError):
        # load_from_dict re-raises with a decorated text; the original holds the fields.
        original = exc.__cause__ if isinstance(exc.__cause__, SchemaError) else exc
        return _schema_messages(original.messages)
    message = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    # log_and_raise_error formats for a terminal: colours, then "(x) <what is wrong>" lines.
    message = _ANSI.sub("", message)
    details = re.findall(r"^\(x\) (.+)$", message, re.MULTILINE)
    return "; ".join(details) if details else " ".join(message.split())


def _schema_messages(messages: Any, prefix: str = "") -> str:
    if isinstance(messages, dict):
        return "; ".join(_schema_messages(value, f"{prefix}{key}.") for key, value in messages.items())
    if isinstance(messages, list):
        return "; ".join(_schema_messages(value, prefix) for value in messages)
    text = " ".join(str(messages).split())
    return f"{prefix.rstrip('.')}: {text}" if prefix else text
