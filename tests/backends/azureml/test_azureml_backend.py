"""What of the azureml backend needs no Azure, and the fake above the SDK (tests/fakes/azureml_fake.py).

The backend's work with Azure is tested through the real MLClient against the ARM emulator
(test_azureml_arm*.py). Here: render and preflight (offline; the fake only proves nothing is
called), the error translation's and the client's unit tests, that importing the backend stays
light, and the fake's own rules, since tests/test_mlflow_model.py still deploys through it. The
fake says no where Azure does, and an unfinished operation of it has no result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.backends.azureml import AzureMLBackend
from tdsp_deploy.backends.azureml.client import MODEL_HASH_TAG, AzureMLClient
from tdsp_deploy.backends.azureml.operations import wait_for
from tdsp_deploy.backends.azureml.records import CONFIG_TAG
from tdsp_deploy.backends.azureml.target import AzureMLTarget
from tdsp_deploy.backends.azureml.translate import Doing, scoring_error, translate_error
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import (
    BackendError,
    DeploymentFailed,
    DeploymentTimeout,
    EndpointNotFound,
    ExitCode,
    TdspError,
)
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.pipeline import PushResult, push
from tests.fakes.azureml_fake import FakeAzureML, FakeOperation, azure_error
from tests.fakes.azureml_project import EXPECTED, NAME, edit, make_project, new_model


def backend_for(manifest: Path, fake: FakeAzureML, events: list | None = None) -> AzureMLBackend:
    loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
    progress = events.append if events is not None else (lambda event: None)
    return AzureMLBackend(loaded.manifest, progress=progress, client=fake)


def run_push(manifest: Path, fake: FakeAzureML, **options: Any) -> PushResult:
    loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
    backend = AzureMLBackend(loaded.manifest, client=fake)
    return push(loaded, backend, **options)


def push_fails(manifest: Path, fake: FakeAzureML, **options: Any) -> TdspError:
    with pytest.raises(TdspError) as caught:
        run_push(manifest, fake, **options)
    return caught.value


@pytest.fixture
def fake() -> Any:
    with FakeAzureML(polls=3).serve() as workspace:
        workspace.answer = json.dumps(EXPECTED).encode()
        yield workspace


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def live_traffic(fake: FakeAzureML) -> dict[str, int]:
    return dict(fake.endpoints[NAME]["traffic"])


# -- pushes ------------------------------------------------------------------------------------
# -- calling, keys, logs, delete ---------------------------------------------------------------
def test_render_writes_the_az_ml_yaml(fake, project, tmp_path):
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    backend = backend_for(project, fake)
    package = build_package(backend.manifest, paths.package_store())
    files = backend.render(package, tmp_path / "out")
    assert {f.name for f in files} >= {"endpoint.yml", "deployment.yml"}
    assert fake.calls == []  # offline


def test_preflight_warns_about_a_smoke_test_the_deployment_would_refuse(fake, project):
    edit(
        project,
        target={"request_settings": {"max_concurrent_requests_per_instance": 1}},
        smoke_test={"request": "request.json", "latency": {"concurrency": 4}},
        rollout={"sticky_header": "x-user"},
    )
    warnings = backend_for(project, fake).preflight()
    assert any("expect HTTP 429" in w for w in warnings)
    assert any("sticky_header" in w for w in warnings)


# -- the fake says no, as Azure ML does -------------------------------------------------------
def _endpoint_entity(**fields: Any) -> Any:
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=NAME, auth_mode="key", **fields)


@pytest.fixture
def two_slots(fake, project) -> FakeAzureML:
    """An endpoint with blue (100%) and green (0%), both healthy."""
    run_push(project, fake)
    new_model(project, '{"w": [8]}')
    edit(project, rollout={"traffic": 0})
    run_push(project, fake)
    assert set(fake.deployments[NAME]) == {"blue", "green"}
    return fake


def _finish(fake: FakeAzureML, operation: FakeOperation) -> None:
    fake.wait(operation, what="test", timeout=5, endpoint=NAME)


def test_fake_refuses_traffic_at_endpoint_creation(fake):
    with pytest.raises(BackendError, match="Traffic cannot be set on an endpoint that is being created"):
        fake.begin_create_endpoint(_endpoint_entity(traffic={"blue": 100}))
    assert fake.endpoints == {}


def test_fake_refuses_traffic_that_does_not_add_up_to_100(two_slots):
    with pytest.raises(BackendError, match="sum of traffic rules must be 0 or 100, got 90"):
        two_slots.set_traffic(NAME, {"blue": 50, "green": 40}, {})


def test_fake_refuses_traffic_to_a_deployment_that_does_not_exist(two_slots):
    with pytest.raises(BackendError, match="'red', which does not exist"):
        two_slots.set_traffic(NAME, {"blue": 0, "red": 100}, {})


def test_fake_refuses_a_traffic_write_that_leaves_out_a_live_deployment(two_slots):
    with pytest.raises(BackendError, match="leaves out blue"):
        two_slots.set_traffic(NAME, {"green": 100}, {})


def test_fake_refuses_mirror_above_50_percent(two_slots):
    with pytest.raises(BackendError, match="cannot exceed 50%"):
        two_slots.set_traffic(NAME, {"blue": 100}, {"green": 60})


def test_fake_refuses_mirror_to_a_deployment_with_live_traffic(two_slots):
    with pytest.raises(BackendError, match="takes live traffic and cannot receive mirror"):
        two_slots.set_traffic(NAME, {"blue": 50, "green": 50}, {"green": 10})


def test_fake_refuses_mirror_to_two_deployments(two_slots, project):
    # a third deployment, so that two can be mirrored while one is live
    backend = backend_for(project, two_slots)
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    package = build_package(backend.manifest, paths.package_store())
    backend.deploy_slot("red", package)
    backend.wait_healthy("red")
    with pytest.raises(BackendError, match="one deployment only"):
        two_slots.set_traffic(NAME, {"blue": 100}, {"green": 10, "red": 10})


def test_fake_refuses_to_delete_a_deployment_with_traffic(two_slots):
    with pytest.raises(BackendError, match="has traffic: live 100%"):
        two_slots.begin_delete_deployment(NAME, "blue")
    _finish(two_slots, two_slots.set_traffic(NAME, {"blue": 100, "green": 0}, {"green": 10}))
    with pytest.raises(BackendError, match="mirror 10%"):
        two_slots.begin_delete_deployment(NAME, "green")


def test_fake_refuses_a_model_version_registered_again_with_other_content(fake, tmp_path):
    from azure.ai.ml.entities import Model

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.json").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "w.json").write_text("2")
    assert fake.ensure_model(Model(name="m", version="1", path=str(tmp_path / "a"))) == ("azureml:m:1", True)
    assert fake.ensure_model(Model(name="m", version="1", path=str(tmp_path / "a"))) == ("azureml:m:1", False)
    with pytest.raises(BackendError, match="already registered with other content"):
        fake.ensure_model(Model(name="m", version="1", path=str(tmp_path / "b")))
    assert fake.uploads == ["m:1"]


def test_fake_refuses_a_write_while_an_operation_runs(fake):
    fake.begin_create_endpoint(_endpoint_entity())  # still Creating: not waited for
    with pytest.raises(BackendError, match="another operation is in progress") as caught:
        fake.set_traffic(NAME, {}, {})
    assert "Creating" in caught.value.message


def test_fake_refuses_a_deployment_on_an_endpoint_that_does_not_exist(fake, project):
    from tdsp_deploy.backends.azureml import entities

    backend = backend_for(project, fake)
    deployment = entities.build_deployment(
        backend.manifest,
        "blue",
        model="azureml:m:1",
        environment="azureml:e:1",
        code_dir=project.parent,
        scoring_script="score.py",
    )
    with pytest.raises(EndpointNotFound):
        fake.begin_create_deployment(deployment)


def test_fake_operations_take_n_polls(fake):
    operation = fake.begin_create_endpoint(_endpoint_entity())
    operation.wait(timeout=0)
    assert not operation.done()
    operation.wait(timeout=0)
    assert not operation.done()
    operation.wait(timeout=0)
    assert operation.done() and operation.status() == "Succeeded" and operation.polls == 3
    assert fake.get_endpoint(NAME).provisioning_state == "Succeeded"


def test_fake_injected_probe_failure_fails_the_operation(fake, project):
    fake.probe_failure["blue"] = "boom in init()"
    with pytest.raises(DeploymentFailed, match="liveness"):
        run_push(project, fake)


def test_fake_operation_that_never_finishes_hits_the_deadline(fake):
    operation = FakeOperation(1, lambda: None, never=True)
    with pytest.raises(DeploymentTimeout, match="not ready after 0.05 s"):
        wait_for(operation, what="it", timeout=0.05, poll_interval=0.01)


def test_fake_data_plane_refuses_unpinned_calls_without_live_traffic(two_slots, project):
    backend = backend_for(project, two_slots)
    backend.set_traffic({"blue": 0, "green": 0})
    answer = backend.invoke(b"{}")
    assert answer.status == 404
    assert backend.invoke(b"{}", slot="green").status == 200  # pinning still reaches it


def test_fake_has_the_clients_public_methods():
    public = {name for name in dir(AzureMLClient) if not name.startswith("_")} - {"connect"}
    missing = {name for name in public if not hasattr(FakeAzureML, name)}
    assert not missing


# -- the seam translates real azure-core exceptions --------------------------------------------
DEPLOYING = Doing(
    "deploy 'blue' to endpoint 'iris'",
    endpoint="iris",
    deployment="blue",
    instance_type="Standard_F4s_v2",
    instance_count=3,
    deploying=True,
)


def test_translate_sign_in_problems():
    from azure.identity import CredentialUnavailableError

    error = translate_error(CredentialUnavailableError("DefaultAzureCredential failed"), DEPLOYING)
    assert isinstance(error, BackendError) and error.exit_code == ExitCode.BACKEND
    assert "az login" in error.hint and "AZURE_CLIENT_ID" in error.hint


def test_translate_quota_from_a_nested_error_code():
    from azure.core.exceptions import HttpResponseError

    class Response:
        status_code, reason, headers, request = 400, "Bad Request", {}, None

        def text(self, encoding=None):
            return json.dumps(
                {
                    "error": {
                        "code": "BadRequest",
                        "message": "Deployment failed",
                        "details": [{"code": "OutOfQuota", "message": "Not enough cores"}],
                    }
                }
            )

    error = translate_error(HttpResponseError(response=Response()), DEPLOYING)
    assert isinstance(error, DeploymentFailed)
    assert "3 x Standard_F4s_v2" in error.hint


def test_translate_image_build_failure_points_at_the_environment_file():
    error = translate_error(azure_error(400, "ImageBuildFailure", "pip failed"), DEPLOYING)
    assert isinstance(error, DeploymentFailed)
    assert "requirements" in error.hint and "conda_file" in error.hint


def test_translate_not_found_conflict_network_and_bugs():
    read = Doing("read endpoint 'iris'", endpoint="iris")
    assert isinstance(
        translate_error(azure_error(404, "ResourceNotFound", "no such endpoint"), read), EndpointNotFound
    )
    conflict = translate_error(azure_error(409, "Conflict", "busy"), read)
    assert type(conflict) is BackendError and "retry" in conflict.hint
    from azure.core.exceptions import ServiceRequestError

    network = translate_error(ServiceRequestError("connection refused"), read)
    assert isinstance(network, BackendError) and "cannot reach Azure" in network.message
    assert translate_error(KeyError("a bug"), read) is None  # not Azure's: stays a bug


def test_scoring_error_leaves_the_models_own_answers_alone():
    common = dict(
        endpoint="iris",
        deployment="blue",
        request_timeout_ms=5000,
        max_concurrent_requests_per_instance=1,
        instance_count=1,
    )
    assert scoring_error(200, {}, **common) is None
    assert scoring_error(500, {}, **common) is None
    assert scoring_error(429, {}, **common) is not None


# -- the real client over a recording stand-in for MLClient's operations -------------------------
class _Recorder:
    """Just enough of MLClient for the client's own logic (read-modify-write, skip-if-present,
    translation, quiet stdout); what Azure does is the fake's job, above."""

    def __init__(self, endpoint: Any, models: dict | None = None):
        self.endpoint = endpoint
        self.written: list[Any] = []
        self.models_by_version = models or {}
        self.created_models: list[Any] = []
        outer = self

        class Endpoints:
            def get(self, name):
                if name != outer.endpoint.name:
                    raise azure_error(404, "ResourceNotFound", f"endpoint {name} not found")
                return outer.endpoint

            def begin_create_or_update(self, entity):
                print(".", end="")  # as azure-ai-ml's poller does
                outer.written.append(entity)
                return FakeOperation(1, lambda: entity)

        class Models:
            def get(self, name, version):
                if (name, version) not in outer.models_by_version:
                    raise azure_error(404, "ResourceNotFound", "no such model")
                return outer.models_by_version[(name, version)]

            def create_or_update(self, model):
                outer.created_models.append(model)
                return model

        self.online_endpoints = Endpoints()
        self.models = Models()


def test_client_set_traffic_is_read_modify_write(capsys):
    endpoint = _endpoint_entity(tags={"team": "ds"}, traffic={"blue": 90, "green": 10})
    recorder = _Recorder(endpoint)
    client = AzureMLClient(recorder)

    operation = client.set_traffic(NAME, {"blue": 0, "green": 100}, {})
    operation.wait()

    (written,) = recorder.written
    assert written is endpoint  # the entity read, written back whole
    assert written.tags == {"team": "ds"} and written.auth_mode == "key"
    assert written.traffic == {"blue": 0, "green": 100}
    assert capsys.readouterr().out == ""  # the SDK's poll dots never reach stdout
    with pytest.raises(BackendError, match="leaves out green"):  # green has 100% now
        client.set_traffic(NAME, {"blue": 100}, {})
    assert len(recorder.written) == 1
    with pytest.raises(EndpointNotFound):
        client.set_traffic("other", {}, {})


def test_client_registers_a_model_only_when_its_version_is_absent():
    from azure.ai.ml.entities import Model

    registered = Model(name="m", version="1", path=".", tags={MODEL_HASH_TAG: "aaa"})
    recorder = _Recorder(_endpoint_entity(), models={("m", "1"): registered})
    client = AzureMLClient(recorder)

    assert client.ensure_model(Model(name="m", version="1", path=".", tags={MODEL_HASH_TAG: "aaa"})) == (
        "azureml:m:1",
        False,
    )
    with pytest.raises(BackendError, match="already registered with other content"):
        client.ensure_model(Model(name="m", version="1", path=".", tags={MODEL_HASH_TAG: "bbb"}))
    assert client.ensure_model(Model(name="m", version="2", path=".")) == ("azureml:m:2", True)
    assert [m.version for m in recorder.created_models] == ["2"]


def test_deployment_tags_carry_what_it_runs(fake, project):
    result = run_push(project, fake)
    tags = fake.deployments[NAME]["blue"]["entity"].tags
    assert tags[CONFIG_TAG] == backend_for(project, fake).status().slot("blue").config_id
    assert result.package_id in tags.values()


# -- light import -----------------------------------------------------------------------------
def test_importing_the_backend_does_not_import_the_azure_sdk():
    code = (
        "import sys\n"
        "import tdsp_deploy.backends.azureml, tdsp_deploy.backends.azureml.client\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('azure', 'msrest', 'marshmallow')))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_backend_is_a_registered_target_kind():
    from tdsp_deploy.backends.registry import Registry

    registry = Registry.discover()
    if "azureml" not in registry.kinds:
        pytest.skip("the azureml entry point is not registered in this install (pyproject.toml)")
    assert registry.factory("azureml") is AzureMLBackend
