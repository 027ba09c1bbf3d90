"""``render`` for Azure ML: the push as plain az ml CLI v2 YAML, reviewable and runnable.

``out_dir`` receives ``endpoint.yml`` and ``deployment.yml`` (with their ``$schema`` lines),
the conda file when one is generated, and the package content they point to, by paths
relative to the YAML files. So the folder can be reviewed in a pull request, or deployed by
hand with ``az ml online-endpoint create -f endpoint.yml`` and
``az ml online-deployment create -f deployment.yml``, and gives the same entities as a push.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tdsp_deploy.backends.azureml.entities import (
    build_deployment,
    build_endpoint,
    build_environment,
    build_model,
    is_no_code,
    validate_entities,
)
from tdsp_deploy.backends.azureml.upload import code_for_upload
from tdsp_deploy.errors import BackendError
from tdsp_deploy.packaging.lock import LOCK_NAME
from tdsp_deploy.secrets import NO_SECRETS, SecretValues, redact_variables

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

ENDPOINT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json"
DEPLOYMENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"
ENDPOINT_FILE = "endpoint.yml"
DEPLOYMENT_FILE = "deployment.yml"
CONDA_FILE = "conda.yml"
PACKAGE_FOLDER = "package"


def render_yaml(
    manifest: ManifestBase, lock: PackageLock, out_dir: Path, slot: str, *, package_dir: Path
) -> list[Path]:
    """Write the endpoint and the ``slot`` deployment as az ml YAML into ``out_dir``.

    ``package_dir`` is the unpacked package (``extract_package``). When it lies outside
    ``out_dir`` its content is placed in ``out_dir/package`` (hard links where possible), so
    every path in the YAML resolves inside ``out_dir``. The YAML is read back with
    azure-ai-ml's loaders before returning. Returns the files written at the top of ``out_dir``.
    """
    out_dir = Path(out_dir).absolute()
    _make_dir(out_dir)
    content = _place_content(Path(package_dir).absolute(), out_dir)

    endpoint = build_endpoint(manifest)
    model = build_model(manifest, lock, content / lock.model.path)
    environment_dir = content / "environment" if lock.environment else None
    no_code = is_no_code(manifest)  # an MLflow model: Azure ML brings script and environment
    environment = None if no_code else build_environment(manifest, lock, environment_dir)
    deployment = build_deployment(
        manifest,
        slot,
        model=model,
        environment=environment,
        # the code folder as a push uploads it: without the manifest and the smoke-test files
        code_dir=None if no_code else code_for_upload(manifest, content),
        scoring_script=None if no_code else lock.scoring_script_name,
    )
    validate_entities(endpoint, model, *([environment] if environment is not None else []), deployment)

    written: list[Path] = []
    conda_file: Path | None = None
    if environment is None:
        pass
    elif lock.environment and "conda_file" in lock.environment and environment_dir is not None:
        conda_file = content / lock.environment["conda_file"]  # the user's own file, as shipped
    elif environment.conda_file is not None:
        conda_file = out_dir / CONDA_FILE
        _write(conda_file, yaml.safe_dump(environment.conda_file, sort_keys=False))
        written.append(conda_file)

    endpoint_file = out_dir / ENDPOINT_FILE
    deployment_file = out_dir / DEPLOYMENT_FILE
    _write(endpoint_file, _endpoint_yaml(endpoint))
    deployment_text = _deployment_yaml(
        deployment, model, environment, conda_file, out_dir, secrets=manifest.secret_values
    )
    _write(deployment_file, deployment_text)
    _read_back(endpoint_file, deployment_file)
    return [endpoint_file, deployment_file, *written]


# --- documents ------------------------------------------------------------------------------


def _endpoint_yaml(endpoint: Any) -> str:
    doc: dict[str, Any] = {
        "name": endpoint.name,
        "auth_mode": endpoint.auth_mode,
        "public_network_access": endpoint.public_network_access,
    }
    if endpoint.tags:
        doc["tags"] = dict(endpoint.tags)
    note = "# traffic is set once the deployment is healthy (az ml online-endpoint update --traffic)\n"
    return _header(ENDPOINT_SCHEMA) + _dump(doc) + note


def _deployment_yaml(
    deployment: Any,
    model: Any,
    environment: Any,
    conda_file: Path | None,
    base: Path,
    *,
    secrets: SecretValues = NO_SECRETS,
) -> str:
    code = deployment.code_configuration
    doc: dict[str, Any] = {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint_name,
        "model": {
            "name": model.name,
            "version": model.version,
            "path": _relative(Path(model.path), base),
            "type": model.type,
        },
    }
    if code is not None:  # without code and environment: Azure ML's no-code MLflow deployment
        doc["code_configuration"] = {
            "code": _relative(Path(code.code), base),
            "scoring_script": code.scoring_script,
        }
    if environment is not None:
        doc["environment"] = {
            "name": environment.name,
            "version": environment.version,
            "image": environment.image,
        }
        if conda_file is not None:
            doc["environment"]["conda_file"] = _relative(conda_file, base)
    if model.tags:
        doc["model"]["tags"] = dict(model.tags)
    if deployment.environment_variables:
        # for review: values from the environment and of secret-looking names are not written out
        doc["environment_variables"] = redact_variables(deployment.environment_variables, secrets)
    doc["instance_type"] = deployment.instance_type
    doc["instance_count"] = deployment.instance_count
    doc["request_settings"] = _settings(deployment.request_settings)
    for name in ("liveness_probe", "readiness_probe"):
        probe = getattr(deployment, name)
        if probe is not None:
            doc[name] = _settings(probe)
    doc["app_insights_enabled"] = deployment.app_insights_enabled
    doc["egress_public_network_access"] = deployment.egress_public_network_access
    if deployment.tags:
        doc["tags"] = dict(deployment.tags)
    return _header(DEPLOYMENT_SCHEMA) + _dump(doc)


_SETTING_ORDER = (
    "request_timeout_ms",
    "max_concurrent_requests_per_instance",
    "max_queue_wait_ms",
    "initial_delay",
    "period",
    "timeout",
    "success_threshold",
    "failure_threshold",
)


def _settings(entity: Any) -> dict[str, Any]:
    return {key: getattr(entity, key) for key in _SETTING_ORDER if getattr(entity, key, None) is not None}


def _header(schema: str) -> str:
    return f"$schema: {schema}\n"


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


# --- files ----------------------------------------------------------------------------------


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create {path}: {exc.strerror or exc}") from None


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror or exc}") from None


def _place_content(package_dir: Path, out_dir: Path) -> Path:
    """The package content, somewhere inside ``out_dir``."""
    if not (package_dir / LOCK_NAME).is_file():
        raise BackendError(f"{package_dir} is not an unpacked package (no {LOCK_NAME})")
    if package_dir.resolve().is_relative_to(out_dir.resolve()):
        return package_dir
    dest = out_dir / PACKAGE_FOLDER
    if dest.exists():
        # Only a copy this function made (it holds a lock) is replaced; anything else is the user's.
        if not (dest / LOCK_NAME).is_file():
            raise BackendError(
                f"{dest} exists and is not a rendered package",
                hint="render into an empty folder, or remove that folder",
            )
        shutil.rmtree(dest)
    try:
        shutil.copytree(package_dir, dest, copy_function=_link_or_copy)
    except (OSError, shutil.Error) as exc:
        raise BackendError(f"cannot copy the package into {dest}: {exc}") from None
    return dest


def _link_or_copy(source: str, dest: str) -> None:
    # A model may be gigabytes: a hard link costs nothing when both sides share a file system.
    with contextlib.suppress(OSError):
        os.link(source, dest)
        return
    shutil.copy2(source, dest)


def _read_back(endpoint_file: Path, deployment_file: Path) -> None:
    """Load what was written with azure-ai-ml's loaders, as ``az ml`` will."""
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    for load, path in ((load_online_endpoint, endpoint_file), (load_online_deployment, deployment_file)):
        try:
            load(path)
        except Exception as exc:  # the SDK raises many types; any of them is our bug here
            raise BackendError(
                f"azure-ai-ml cannot read the rendered {path.name}: {exc}",
                hint="this is a bug in tdsp-deploy's Azure ML rendering; report it",
            ) from exc
