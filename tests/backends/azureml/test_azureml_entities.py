"""The azureml target offline: its schema's limits, the azure-ai-ml entities a push sends (checked
by the SDK's own validation), the az ml YAML `render` writes (read back with the SDK's loaders),
and `import` of that YAML back into a manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tdsp_deploy.backends.azureml import entities
from tdsp_deploy.backends.azureml.importer import import_az_ml
from tdsp_deploy.backends.azureml.render import DEPLOYMENT_SCHEMA, ENDPOINT_SCHEMA, render_yaml
from tdsp_deploy.backends.azureml.target import (
    DEFAULT_IMAGE,
    INFERENCE_SERVER,
    AzureMLTarget,
    azureml_warnings,
    check_manifest_for_azureml,
)
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import BackendError, ExitCode, ManifestError, UsageError
from tdsp_deploy.manifest.loader import load_manifest
from tdsp_deploy.manifest.model import ENDPOINT_NAME, manifest_class
from tdsp_deploy.packaging import build_package, extract_package
from tests.fakes.packaging_project import make_project

TARGETS = (LocalTarget, AzureMLTarget)
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
WORKSPACE = {"subscription_id": SUBSCRIPTION, "resource_group": "rg-ml", "workspace": "ws-ml"}


def azure_target(**overrides: Any) -> dict[str, Any]:
    return {"kind": "azureml", **WORKSPACE, **overrides}


def raw_manifest(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "iris",
        "model": {"path": "model"},
        "scoring": {"code": "src", "script": "score.py"},
        "environment": {"requirements": "requirements.txt", "variables": {"LOG_LEVEL": "info"}},
        "target": azure_target(),
    }
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def validate(root: Path, raw: dict[str, Any]) -> Any:
    return manifest_class(TARGETS).model_validate(raw, context={"base_dir": root})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


@pytest.fixture
def unpacked(project: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(manifest, lock, package_dir) for the default project with a full azureml target."""
    target = azure_target(
        instance_type="Standard_F4s_v2",
        instance_count=2,
        auth_mode="aml_token",
        public_network_access="enabled",
        egress_public_network_access="disabled",
        app_insights_enabled=True,
        request_settings={"request_timeout_ms": 90_000, "max_concurrent_requests_per_instance": 4},
        liveness_probe={"initial_delay": 30, "period": 15},
        readiness_probe={"failure_threshold": 5, "success_threshold": 2},
        tags={"team": "data-science", "cost-center": 42},
        timeout=2400,
    )
    manifest = validate(project, raw_manifest(target=target))
    built = build_package(manifest, tmp_path / "dist")
    package_dir = tmp_path / "unpacked"
    lock = extract_package(built.path, package_dir)
    return manifest, lock, package_dir


# -- the target schema: each documented limit, refused with a message that says how to fix --

LIMITS = [
    ({"subscription_id": "my-subscription"}, "subscription_id", "must be an Azure subscription id, a GUID"),
    ({"resource_group": "rg."}, "resource_group", "not ending with '.'"),
    ({"resource_group": "r" * 91}, "resource_group", "1-90 letters"),
    ({"resource_group": "rg/ml"}, "resource_group", "must be an Azure resource group name"),
    ({"workspace": "ws"}, "workspace", "3-33 letters"),
    ({"workspace": "-ws-ml"}, "workspace", "starting with a letter or digit"),
    ({"workspace": "w" * 34}, "workspace", "3-33 letters"),
    ({"instance_type": "Standard DS3 v2"}, "instance_type", "must be a VM size such as Standard_DS3_v2"),
    ({"instance_count": 0}, "instance_count", "must be >= 1"),
    ({"auth_mode": "token"}, "auth_mode", "must be 'key', 'aml_token' or 'aad_token'"),
    ({"public_network_access": "on"}, "public_network_access", "must be 'enabled' or 'disabled'"),
    (
        {"egress_public_network_access": "off"},
        "egress_public_network_access",
        "must be 'enabled' or 'disabled'",
    ),
    (
        {"request_settings": {"request_timeout_ms": 180_001}},
        "request_settings.request_timeout_ms",
        "must be <= 180000 (180 s, the request time-out limit of Azure ML managed online endpoints)",
    ),
    ({"request_settings": {"request_timeout_ms": 0}}, "request_settings.request_timeout_ms", "must be >= 1"),
    (
        {"request_settings": {"max_concurrent_requests_per_instance": 0}},
        "request_settings.max_concurrent_requests_per_instance",
        "must be >= 1",
    ),
    ({"request_settings": {"max_queue_wait_ms": -1}}, "request_settings.max_queue_wait_ms", "must be >= 0"),
    (
        {"liveness_probe": {"success_threshold": 2}},
        "liveness_probe",
        "success_threshold of the liveness probe is fixed at 1 by Azure ML; remove it",
    ),
    ({"liveness_probe": {"initial_delay": 0}}, "liveness_probe.initial_delay", "must be >= 1"),
    ({"readiness_probe": {"timeout": 0}}, "readiness_probe.timeout", "must be >= 1"),
    ({"readiness_probe": {"period": 0}}, "readiness_probe.period", "must be >= 1"),
    ({"readiness_probe": {"failure_threshold": 0}}, "readiness_probe.failure_threshold", "must be >= 1"),
    ({"readiness_probe": {"success_threshold": 0}}, "readiness_probe.success_threshold", "must be >= 1"),
    ({"tags": {"team/ds": "x"}}, "tags.team/ds", "Azure tag names cannot contain /"),
    ({"tags": {"a<b>": "x"}}, "tags.a<b>", "Azure tag names cannot contain < >"),
    ({"tags": {"t" * 513: "x"}}, "tags." + "t" * 513, "a tag name has at most 512 characters"),
    ({"tags": {"team": "v" * 257}}, "tags.team", "a tag value has at most 256 characters"),
    (
        {"tags": {f"t{i}": "x" for i in range(51)}},
        "tags",
        "Azure allows at most 50 tags per resource, got 51",
    ),
    ({"tags": {"tdsp-deploy-package-id": "x"}}, "tags.tdsp-deploy-package-id", "are reserved"),
    ({"timeout": 0}, "timeout", "must be > 0"),
    ({"instance_size": "Standard_DS3_v2"}, "instance_size", "unknown key; did you mean 'instance_type'?"),
]


@pytest.mark.parametrize(("change", "field", "message"), LIMITS, ids=[repr(c)[:60] for c, _, _ in LIMITS])
def test_each_documented_limit_is_refused_at_its_field_with_the_fix(
    project: Path, change: dict[str, Any], field: str, message: str
):
    # Through the real loader: what the user sees, located at the manifest field.
    (project / "deploy.yaml").write_text(yaml.safe_dump(raw_manifest(target=azure_target(**change))))
    with pytest.raises(ManifestError) as caught:
        load_manifest(project / "deploy.yaml", targets=TARGETS, environ={})
    (problem,) = caught.value.problems
    assert problem.field == f"target.{field}"
    assert message in problem.message
    assert problem.line is not None


def test_values_at_the_limits_pass_and_defaults_are_azure_mls(project: Path):
    target = validate(
        project,
        raw_manifest(
            target=azure_target(
                request_settings={"request_timeout_ms": 180_000},
                liveness_probe={},
                readiness_probe={"success_threshold": 3},
                tags={f"t{i}": "v" * 256 for i in range(50)},
                workspace="w" * 33,
                resource_group="Rg_(ml)-1.a",
                instance_count=60,  # above the default quota: a warning, not an error
            )
        ),
    ).target
    assert target.request_settings.request_timeout_ms == 180_000
    assert target.request_settings.max_concurrent_requests_per_instance == 1
    assert target.request_settings.max_queue_wait_ms is None
    assert target.liveness_probe.model_dump() == {
        "initial_delay": 10,
        "period": 10,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 30,
    }
    defaults = validate(project, raw_manifest()).target
    assert (defaults.instance_type, defaults.instance_count, defaults.auth_mode) == (
        "Standard_DS3_v2",
        1,
        "key",
    )
    assert (defaults.public_network_access, defaults.egress_public_network_access) == ("enabled", "enabled")
    assert (defaults.app_insights_enabled, defaults.timeout, defaults.tags) == (False, 1800, {})
    assert defaults.liveness_probe is None and defaults.readiness_probe is None


def test_the_loader_shows_the_limit_at_its_line_with_the_fix(project: Path):
    (project / "deploy.yaml").write_text(
        "name: iris\n"
        "model: {path: model}\n"
        "scoring: {code: src, script: score.py}\n"
        "target:\n"
        "  kind: azureml\n"
        "  subscription_id: ${AZURE_SUBSCRIPTION_ID}\n"
        "  resource_group: rg-ml\n"
        "  workspace: ws-ml\n"
        "  request_settings:\n"
        "    request_timeout_ms: 300000\n"
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(
            project / "deploy.yaml", targets=TARGETS, environ={"AZURE_SUBSCRIPTION_ID": SUBSCRIPTION}
        )
    (problem,) = caught.value.problems
    assert (problem.line, problem.field) == (10, "target.request_settings.request_timeout_ms")
    assert problem.message.startswith("must be <= 180000 (180 s")
    assert "make scoring faster" in problem.message


def test_the_json_schema_states_the_limits(project: Path):
    schema = AzureMLTarget.model_json_schema()
    settings_schema = schema["$defs"]["RequestSettings"]["properties"]["request_timeout_ms"]
    assert (settings_schema["minimum"], settings_schema["maximum"]) == (1, 180_000)
    assert schema["properties"]["auth_mode"]["enum"] == ["key", "aml_token", "aad_token"]
    assert schema["additionalProperties"] is False


# -- checks that need the whole manifest ---------------------------------------------------


def test_names_azure_refuses_are_manifest_errors(project: Path):
    for raw in (raw_manifest(name="iris-"), raw_manifest(rollout={"deployment": "blue-"})):
        with pytest.raises(ValidationError):
            validate(project, raw)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(ENDPOINT_NAME, fullmatch=True))
def test_manifest_names_plus_our_check_are_exactly_the_names_azure_ml_accepts(name: str):
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name
    from azure.ai.ml.exceptions import ValidationException

    from tdsp_deploy.backends.azureml.target import AZURE_ENDPOINT_NAME

    try:
        validate_endpoint_or_deployment_name(name)
        azure_accepts = True
    except ValidationException:
        azure_accepts = False
    assert azure_accepts == bool(AZURE_ENDPOINT_NAME.match(name))


def test_a_clean_manifest_has_no_problems_and_no_warnings(project: Path):
    (project / "requirements.txt").write_text(f"numpy>=1.24\n{INFERENCE_SERVER}==1.4.0\n")
    manifest = validate(
        project,
        raw_manifest(environment={"requirements": "requirements.txt", "image": DEFAULT_IMAGE}),
    )
    assert check_manifest_for_azureml(manifest) == []
    assert azureml_warnings(manifest) == []


def test_warnings_say_what_azure_ml_will_do(project: Path):
    manifest = validate(
        project,
        raw_manifest(
            environment={"requirements": "requirements.txt", "variables": {"AZUREML_MODEL_DIR": "/x"}},
            target=azure_target(
                instance_type="Standard_XYZ9",
                instance_count=51,
                request_settings={"max_queue_wait_ms": 500},
            ),
        ),
    )
    assert check_manifest_for_azureml(manifest) == []
    warnings = azureml_warnings(manifest)
    assert f"environment.image: not given; Azure ML builds the environment on {DEFAULT_IMAGE}" in warnings
    assert any(w.startswith(f"environment.requirements: {INFERENCE_SERVER} is not listed") for w in warnings)
    assert "environment.variables.AZUREML_MODEL_DIR: is set by Azure ML in the container" in warnings
    assert any(
        w.startswith("target.instance_type: Standard_XYZ9 is not in Azure ML's list") for w in warnings
    )
    assert any(w.startswith("target.instance_count: above Azure ML's default limit of 50") for w in warnings)
    assert any(w.startswith("target.request_settings.max_queue_wait_ms: deprecated") for w in warnings)


def test_a_conda_file_without_the_inference_server_is_a_warning(project: Path):
    (project / "conda.yaml").write_text("name: x\ndependencies:\n  - python=3.11\n  - pip:\n    - numpy\n")
    manifest = validate(
        project, raw_manifest(environment={"conda_file": "conda.yaml", "image": DEFAULT_IMAGE})
    )
    (warning,) = azureml_warnings(manifest)
    assert warning.startswith(f"environment.conda_file: does not list {INFERENCE_SERVER}")


def test_requirements_that_include_other_files_are_a_problem(project: Path):
    (project / "requirements.txt").write_text("numpy\n# pinned elsewhere\n-r base.txt\n")
    manifest = validate(project, raw_manifest())
    (problem,) = check_manifest_for_azureml(manifest)
    assert problem.startswith("environment.requirements: requirements.txt:3: '-r base.txt' refers to a file")


# -- entities, checked by azure-ai-ml itself ----------------------------------------------


def build_all(manifest: Any, lock: Any, package_dir: Path, slot: str = "blue") -> tuple[Any, Any, Any, Any]:
    endpoint = entities.build_endpoint(manifest)
    model = entities.build_model(manifest, lock, package_dir / lock.model.path)
    environment = entities.build_environment(manifest, lock, package_dir / "environment")
    deployment = entities.build_deployment(
        manifest,
        slot,
        model=model,
        environment=environment,
        code_dir=package_dir / "code",
        scoring_script=lock.scoring_script_name,
    )
    return endpoint, model, environment, deployment


def test_entities_carry_the_manifest_and_pass_the_sdks_validation(unpacked):  # type: ignore[no-untyped-def]
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    manifest, lock, package_dir = unpacked
    endpoint, model, environment, deployment = build_all(manifest, lock, package_dir)
    entities.validate_entities(endpoint, model, environment, deployment)

    assert isinstance(endpoint, ManagedOnlineEndpoint)
    assert (endpoint.name, endpoint.auth_mode, endpoint.public_network_access) == (
        "iris",
        "aml_token",
        "enabled",
    )
    assert endpoint.tags == {"team": "data-science", "cost-center": "42"}
    assert endpoint.traffic == {} and endpoint.mirror_traffic == {}  # no traffic at creation

    assert (model.name, model.version, model.type) == ("iris", lock.model_version, "custom_model")
    assert Path(model.path) == package_dir / "model" / "model"
    assert model.tags == {entities.MODEL_SHA256_TAG: lock.model.sha256}

    assert environment.name == "iris-env" and environment.image == DEFAULT_IMAGE
    python = ".".join(lock.python.split(".")[:2])
    assert environment.conda_file == {
        "name": "iris-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": ["pytest>=8", INFERENCE_SERVER]}],
    }

    assert isinstance(deployment, ManagedOnlineDeployment)
    assert (deployment.name, deployment.endpoint_name) == ("blue", "iris")
    assert (deployment.instance_type, deployment.instance_count) == ("Standard_F4s_v2", 2)
    assert deployment.request_settings.request_timeout_ms == 90_000
    assert deployment.request_settings.max_concurrent_requests_per_instance == 4
    assert (deployment.liveness_probe.initial_delay, deployment.liveness_probe.period) == (30, 15)
    assert deployment.liveness_probe.failure_threshold == 30
    assert (deployment.readiness_probe.failure_threshold, deployment.readiness_probe.success_threshold) == (
        5,
        2,
    )
    assert deployment.app_insights_enabled is True
    assert deployment.egress_public_network_access == "disabled"
    assert deployment.environment_variables == {"LOG_LEVEL": "info"}
    assert deployment.code_configuration.scoring_script == "score.py"
    assert Path(deployment.code_configuration.code) == package_dir / "code"

    # What would go over the wire, field for field.
    rest = deployment._to_rest_object(location="westeurope").as_dict()
    properties = rest["properties"]
    assert rest["sku"] == {"name": "Default", "capacity": 2}
    assert properties["requestSettings"] == {
        "maxConcurrentRequestsPerInstance": 4,
        "requestTimeout": "PT1M30S",
    }
    assert properties["livenessProbe"]["initialDelay"] == "PT30S"
    assert properties["egressPublicNetworkAccess"] == "disabled"
    assert properties["appInsightsEnabled"] is True
    rest_endpoint = endpoint._to_rest_online_endpoint("westeurope").as_dict()
    assert rest_endpoint["properties"]["authMode"] == "AMLToken"
    assert model._to_rest_object().as_dict()["properties"]["modelType"] == "custom_model"
    assert environment._to_rest_object().as_dict()["properties"]["image"] == DEFAULT_IMAGE


def test_extra_tags_join_the_targets_on_the_deployment(unpacked):  # type: ignore[no-untyped-def]
    manifest, lock, package_dir = unpacked
    _, model, environment, _ = build_all(manifest, lock, package_dir)
    deployment = entities.build_deployment(
        manifest,
        "green",
        model="azureml:iris:3",
        environment="azureml:iris-env:abc",
        code_dir=package_dir / "code",
        scoring_script="score.py",
        extra_tags={"tdsp-deploy-package-id": lock.package_id},
    )
    entities.validate_entities(deployment)
    assert deployment.tags == {
        "team": "data-science",
        "cost-center": "42",
        "tdsp-deploy-package-id": lock.package_id,
    }
    assert deployment._to_rest_object(location="x").as_dict()["properties"]["model"] == "azureml:iris:3"


def test_the_environment_version_follows_its_content_only(project: Path, tmp_path: Path):
    def environment_of(requirements: str, image: str | None = None) -> Any:
        (project / "requirements.txt").write_text(requirements)
        env = {"requirements": "requirements.txt", **({"image": image} if image else {})}
        manifest = validate(project, raw_manifest(environment=env))
        lock = build_package(manifest, tmp_path / "dist").lock
        return entities.build_environment(manifest, lock, None)

    first = environment_of("numpy\n")
    assert environment_of("# a comment\n\nnumpy\n").version == first.version  # same content
    assert environment_of("numpy\nscipy\n").version != first.version
    assert environment_of(
        "numpy\n", image="mcr.microsoft.com/azureml/minimal-py311-inference:latest"
    ).version != (first.version)
    assert entities.environment_version("img", {"a": 1, "b": [1, 2]}) == entities.environment_version(
        "img", {"b": [1, 2], "a": 1}
    )


def test_a_conda_file_is_sent_as_written_and_an_image_alone_as_it_is(project: Path, tmp_path: Path):
    (project / "conda.yaml").write_text(
        "name: custom\nchannels: [conda-forge]\n"
        f"dependencies:\n  - python=3.10\n  - pip:\n    - {INFERENCE_SERVER}\n"
    )
    manifest = validate(project, raw_manifest(environment={"conda_file": "conda.yaml"}))
    built = build_package(manifest, tmp_path / "dist")
    lock = extract_package(built.path, tmp_path / "unpacked")
    environment = entities.build_environment(manifest, lock, tmp_path / "unpacked" / "environment")
    assert environment.conda_file == yaml.safe_load((project / "conda.yaml").read_text())
    entities.validate_entities(environment)

    image = "mcr.microsoft.com/azureml/minimal-py311-inference:latest"
    plain = validate(project, raw_manifest(environment={"image": image}))
    environment = entities.build_environment(plain, build_package(plain, tmp_path / "dist2").lock, None)
    assert (environment.image, environment.conda_file) == (image, None)


def test_no_environment_at_all_gets_the_server_on_the_default_image(project: Path, tmp_path: Path):
    manifest = validate(project, raw_manifest(environment=None))
    environment = entities.build_environment(manifest, build_package(manifest, tmp_path / "d").lock, None)
    assert environment.image == DEFAULT_IMAGE
    assert environment.conda_file["dependencies"][-1] == {"pip": [INFERENCE_SERVER]}


def test_what_the_sdk_refuses_comes_out_as_our_errors(unpacked):  # type: ignore[no-untyped-def]
    manifest, lock, package_dir = unpacked
    endpoint, _, environment, deployment = build_all(manifest, lock, package_dir)

    endpoint.auth_mode = "token"
    with pytest.raises(ManifestError) as caught:
        entities.validate_entities(endpoint)
    assert "azure-ai-ml refuses the ManagedOnlineEndpoint 'iris'" in caught.value.message
    assert "'token'" in caught.value.message and caught.value.exit_code == ExitCode.USAGE

    deployment.name = "blue-"
    with pytest.raises(ManifestError, match="The name for a deployment must start with"):
        entities.validate_entities(deployment)

    environment.image = None
    with pytest.raises(ManifestError, match="Docker image or Dockerfile is required"):
        entities.validate_entities(environment)

    with pytest.raises(BackendError, match="could not check"):
        entities.validate_entities(object())

    with pytest.raises(ManifestError) as caught:
        entities.build_deployment(
            manifest, "b-", model=None, environment=None, code_dir=package_dir, scoring_script="score.py"
        )
    assert caught.value.problems[0].field == "rollout.deployment"


def test_an_environment_file_the_package_lacks_is_a_backend_error(unpacked, tmp_path: Path):  # type: ignore[no-untyped-def]
    manifest, lock, _ = unpacked
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="missing from the unpacked package"):
        entities.build_environment(manifest, lock, empty)


# -- render: az ml YAML that the SDK loads back to the same entities ---------------------


def test_render_writes_yaml_the_sdk_loads_as_the_built_entities(unpacked, tmp_path: Path):  # type: ignore[no-untyped-def]
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    manifest, lock, package_dir = unpacked
    out = tmp_path / "rendered"
    files = render_yaml(manifest, lock, out, "green", package_dir=package_dir)
    assert [f.name for f in files] == ["endpoint.yml", "deployment.yml", "conda.yml"]
    endpoint_text, deployment_text = files[0].read_text(), files[1].read_text()
    assert endpoint_text.splitlines()[0] == f"$schema: {ENDPOINT_SCHEMA}"
    assert deployment_text.splitlines()[0] == f"$schema: {DEPLOYMENT_SCHEMA}"
    assert str(tmp_path) not in endpoint_text + deployment_text  # every path is relative
    document = yaml.safe_load(deployment_text)
    assert document["model"]["path"] == "package/model/model"
    # the code folder a push uploads: the scoring folder without the manifest and smoke-test files
    assert document["code_configuration"] == {"code": "package/azureml-code", "scoring_script": "score.py"}
    assert document["environment"]["conda_file"] == "conda.yml"
    assert "traffic" not in yaml.safe_load(endpoint_text)

    built_endpoint, built_model, built_environment, built_deployment = build_all(
        manifest, lock, out / "package", slot="green"
    )
    endpoint = load_online_endpoint(files[0])
    assert endpoint == built_endpoint  # the SDK's own equality: name, auth mode, tags, ...
    assert endpoint.public_network_access == built_endpoint.public_network_access

    deployment = load_online_deployment(files[1])
    for field in (
        "name",
        "endpoint_name",
        "instance_type",
        "instance_count",
        "app_insights_enabled",
        "egress_public_network_access",
        "environment_variables",
        "tags",
    ):
        assert getattr(deployment, field) == getattr(built_deployment, field), field
    for settings_field in ("request_settings", "liveness_probe", "readiness_probe"):
        assert vars(getattr(deployment, settings_field)) == vars(getattr(built_deployment, settings_field))
    model = deployment.model
    assert (model.name, model.version, model.type, model.tags) == (
        built_model.name,
        built_model.version,
        built_model.type,
        built_model.tags,
    )
    assert Path(model.path).resolve() == Path(built_model.path).resolve()
    environment = deployment.environment
    assert (environment.name, environment.version, environment.image) == (
        built_environment.name,
        built_environment.version,
        built_environment.image,
    )
    assert environment.conda_file == built_environment.conda_file
    assert deployment.code_configuration.scoring_script == "score.py"
    code = Path(files[1].parent, deployment.code_configuration.code).resolve()
    assert code == (out / "package" / "azureml-code").resolve()
    # The content the YAML points to is the package's, byte for byte.
    assert (code / "score.py").read_bytes() == (package_dir / "code" / "score.py").read_bytes()
    # The whole deployment converts to what would be sent.
    deployment._to_rest_object(location="westeurope")


def test_render_again_replaces_its_copy_but_never_a_users_folder(unpacked, tmp_path: Path):  # type: ignore[no-untyped-def]
    manifest, lock, package_dir = unpacked
    out = tmp_path / "rendered"
    render_yaml(manifest, lock, out, "blue", package_dir=package_dir)
    (out / "package" / "stale.txt").write_text("from an older render")
    render_yaml(manifest, lock, out, "blue", package_dir=package_dir)
    assert not (out / "package" / "stale.txt").exists()

    other = tmp_path / "other"
    (other / "package").mkdir(parents=True)
    (other / "package" / "notes.txt").write_text("mine")
    with pytest.raises(BackendError, match="is not a rendered package"):
        render_yaml(manifest, lock, other, "blue", package_dir=package_dir)
    assert (other / "package" / "notes.txt").read_text() == "mine"


def test_render_points_into_a_package_already_inside_the_folder(project: Path, tmp_path: Path):
    (project / "conda.yaml").write_text(
        f"name: c\ndependencies:\n  - python=3.11\n  - pip:\n    - {INFERENCE_SERVER}\n"
    )
    manifest = validate(
        project, raw_manifest(environment={"conda_file": "conda.yaml", "image": DEFAULT_IMAGE})
    )
    out = tmp_path / "rendered"
    lock = extract_package(build_package(manifest, tmp_path / "dist").path, out / "unpacked")
    files = render_yaml(manifest, lock, out, "blue", package_dir=out / "unpacked")
    assert [f.name for f in files] == ["endpoint.yml", "deployment.yml"]  # the user's conda file is used
    assert not (out / "package").exists()
    document = yaml.safe_load(files[1].read_text())
    assert document["environment"]["conda_file"] == "unpacked/environment/conda.yaml"
    assert document["model"]["path"] == "unpacked/model/model"


# -- import: az ml YAML back to a manifest ---------------------------------------------------


def test_import_of_rendered_yaml_round_trips_the_target(unpacked, tmp_path: Path):  # type: ignore[no-untyped-def]
    manifest, lock, package_dir = unpacked
    out = tmp_path / "rendered"
    files = render_yaml(manifest, lock, out, "green", package_dir=package_dir)

    document, warnings = import_az_ml(files[0], files[1], out)
    assert document["target"]["subscription_id"] == "${AZURE_SUBSCRIPTION_ID}"
    assert warnings == [
        "target: the workspace is read from ${AZURE_SUBSCRIPTION_ID}, ${AZURE_RESOURCE_GROUP}, "
        "${AZURE_ML_WORKSPACE}; set them, or write the values",
        "smoke_test: no sample request found beside the YAML (sample-request.json, sample-data.json); "
        "give one with --request, or each push gives traffic untested",
    ]
    assert "smoke_test" not in document
    assert document["model"] == {"path": "package/model/model", "name": "iris", "version": lock.model_version}
    assert document["scoring"] == {"code": "package/azureml-code", "script": "score.py"}
    assert document["environment"] == {
        "image": DEFAULT_IMAGE,
        "conda_file": "conda.yml",
        "variables": {"LOG_LEVEL": "info"},
    }
    assert document["rollout"] == {"deployment": "green"}

    # Written as YAML and loaded as any manifest: it validates, with the same settings.
    (out / "deploy.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    environ = {
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "AZURE_RESOURCE_GROUP": WORKSPACE["resource_group"],
        "AZURE_ML_WORKSPACE": WORKSPACE["workspace"],
    }
    imported = load_manifest(out / "deploy.yaml", targets=TARGETS, environ=environ).manifest
    # Everything az ml YAML says comes back; `timeout` (how long a push may take) is ours alone.
    assert imported.target.model_dump(exclude={"timeout"}) == manifest.target.model_dump(exclude={"timeout"})
    assert imported.model.path == out / "package" / "model" / "model"
    assert (imported.model.name, imported.model.version) == ("iris", lock.model_version)
    assert imported.scoring.script == out / "package" / "azureml-code" / "score.py"
    assert imported.environment.variables == manifest.environment.variables
    assert check_manifest_for_azureml(imported) == []

    # And it deploys the same thing: same model content, same environment version.
    rebuilt = build_package(imported, tmp_path / "dist-again")
    assert rebuilt.lock.model.sha256 == lock.model.sha256
    again = entities.build_environment(imported, rebuilt.lock, None)
    assert again.version == entities.build_environment(manifest, lock, package_dir / "environment").version


def test_import_takes_workspace_values_and_relative_paths_only_inside_out_dir(unpacked, tmp_path: Path):  # type: ignore[no-untyped-def]
    manifest, lock, package_dir = unpacked
    out = tmp_path / "rendered"
    files = render_yaml(manifest, lock, out, "blue", package_dir=package_dir)
    elsewhere = tmp_path / "elsewhere"
    document, warnings = import_az_ml(files[0], files[1], elsewhere, **WORKSPACE)
    assert [w for w in warnings if not w.startswith("smoke_test: no sample request")] == []
    assert {k: document["target"][k] for k in WORKSPACE} == WORKSPACE
    assert document["model"]["path"] == str(out / "package" / "model" / "model")  # absolute: outside
    elsewhere.mkdir()
    imported = validate(elsewhere, document)
    assert imported.target.model_dump(exclude={"timeout"}) == manifest.target.model_dump(exclude={"timeout"})


def write_az_ml(
    folder: Path, deployment: dict[str, Any], endpoint: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    endpoint_doc = {"$schema": ENDPOINT_SCHEMA, "name": "iris", "auth_mode": "key", **(endpoint or {})}
    deployment_doc = {
        "$schema": DEPLOYMENT_SCHEMA,
        "name": "blue",
        "endpoint_name": "iris",
        "instance_type": "Standard_DS3_v2",
        "instance_count": 1,
        **deployment,
    }
    (folder / "endpoint.yml").write_text(yaml.safe_dump(endpoint_doc))
    (folder / "deployment.yml").write_text(yaml.safe_dump(deployment_doc))
    return folder / "endpoint.yml", folder / "deployment.yml"


LOCAL_PARTS = {
    "model": {"path": "../proj/model"},
    "code_configuration": {"code": "../proj/src", "scoring_script": "score.py"},
}


def test_import_maps_a_hand_written_pair_and_warns_about_what_it_drops(project: Path, tmp_path: Path):
    endpoint_yml, deployment_yml = write_az_ml(
        tmp_path / "azml",
        {
            **LOCAL_PARTS,
            "environment": "azureml:sklearn-env:7",
            "environment_variables": {"WORKER_COUNT": 2},
            "description": "first model",
            "request_settings": {"request_timeout_ms": 3000},
            "readiness_probe": {"initial_delay": 20},
            "tags": {"team": "ds"},
        },
        {"traffic": {"blue": 100}, "tags": {"owner": "me"}, "auth_mode": "aad_token"},
    )
    document, warnings = import_az_ml(endpoint_yml, deployment_yml, project, **WORKSPACE)
    assert document["model"] == {"path": "model"}  # an unnamed model keeps no hash as its name
    assert document["scoring"] == {"code": "src", "script": "score.py"}
    assert document["environment"] == {"variables": {"WORKER_COUNT": "2"}}
    target = document["target"]
    assert target["auth_mode"] == "aad_token"
    assert target["request_settings"] == {"request_timeout_ms": 3000}
    assert target["readiness_probe"] == {"initial_delay": 20}
    assert target["tags"] == {"owner": "me", "team": "ds"}
    assert document["rollout"] == {"deployment": "blue", "traffic": 100}
    assert any("'azureml:sklearn-env:7' is a registered environment" in w for w in warnings)
    assert any("tags are merged" in w for w in warnings)
    assert "not carried over: description" in warnings
    imported = validate(project, document)
    assert imported.target.request_settings.request_timeout_ms == 3000


def test_import_refuses_what_a_manifest_cannot_say(project: Path, tmp_path: Path):
    registered = write_az_ml(tmp_path / "a", {**LOCAL_PARTS, "model": "azureml:iris-model:3"})
    with pytest.raises(UsageError) as caught:
        import_az_ml(*registered, project)
    assert "model 'azureml:iris-model:3' is registered in a workspace" in caught.value.message
    assert caught.value.hint and "az ml model download --name iris-model --version 3" in caught.value.hint

    invalid = write_az_ml(tmp_path / "b", {**LOCAL_PARTS, "instance_count": "many"})
    with pytest.raises(UsageError) as caught:
        import_az_ml(*invalid, project)
    assert "azure-ai-ml cannot read it as an online deployment" in caught.value.message
    assert "instance_count" in caught.value.message and caught.value.exit_code == ExitCode.USAGE

    kubernetes = write_az_ml(tmp_path / "c", LOCAL_PARTS, {"compute": "azureml:k8s-compute"})
    with pytest.raises(UsageError, match="Kubernetes online endpoint"):
        import_az_ml(*kubernetes, project)

    other = write_az_ml(tmp_path / "d", {**LOCAL_PARTS, "endpoint_name": "wine"})
    with pytest.raises(UsageError, match="endpoint_name 'wine' is not the endpoint 'iris'"):
        import_az_ml(*other, project)

    too_slow = write_az_ml(
        tmp_path / "e", {**LOCAL_PARTS, "request_settings": {"request_timeout_ms": 200_000}}
    )
    with pytest.raises(UsageError, match="must be <= 180000"):
        import_az_ml(*too_slow, project)

    no_code = write_az_ml(tmp_path / "f", {"model": LOCAL_PARTS["model"]})
    with pytest.raises(UsageError, match="no code_configuration"):
        import_az_ml(*no_code, project)


# -- import cost: `validate` and `schema` never load azure-ai-ml ---------------------------


def test_the_target_schema_imports_no_azure_sdk():
    code = (
        "import sys, json\n"
        "import tdsp_deploy.backends.azureml.target as target\n"
        "target.AzureMLTarget.model_json_schema()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'azure' or m.startswith('azure.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []
