"""MLflow models: read with their signature, checked, packaged with a generated entry script,
and served for real on the local target through mlflow.pyfunc."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tdsp_deploy.errors import ExitCode
from tdsp_deploy.mlflow_model import MLmodelError, read_mlmodel, request_problems, sql_columns


@pytest.fixture(scope="module")
def mlflow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A starter with a real MLflow model (saved by mlflow.sklearn, with a signature)."""
    from tests.conftest import CliRunner

    root = tmp_path_factory.mktemp("mlflow") / "project"
    result = CliRunner()("init", root, "--name", "mlflow-model", "--flavor", "mlflow")
    assert result.exit_code == 0, result.stderr
    return root


def _copy(project: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "project"
    shutil.copytree(project, target)
    return target / "deploy.yaml"


def test_the_mlmodel_gives_flavors_and_signature(mlflow_project):
    model = read_mlmodel(mlflow_project / "model")
    assert {"python_function", "sklearn"} <= set(model.flavors)
    assert model.column_names == ["x1", "x2", "x3"]
    inputs, outputs = sql_columns(model)  # type: ignore[misc]
    assert inputs == [{"name": n, "type": "float"} for n in ("x1", "x2", "x3")]
    assert outputs == [{"name": "prediction", "type": "float"}]


def test_requests_are_checked_against_the_signature(mlflow_project):
    model = read_mlmodel(mlflow_project / "model")
    good = {"input_data": {"columns": ["x1", "x2", "x3"], "data": [[1, 2, 3]]}}
    assert request_problems(model, good) == []
    assert request_problems(model, {"input_data": [[1, 2, 3]]}) == []
    assert (
        "lacks x3" in request_problems(model, {"input_data": {"columns": ["x1", "x2"], "data": [[1, 2]]}})[0]
    )
    assert (
        "must be a number"
        in request_problems(model, {"input_data": {"columns": ["x1", "x2", "x3"], "data": [[1, "two", 3]]}})[
            0
        ]
    )
    assert "3 values" in request_problems(model, {"input_data": [[1, 2]]})[0]
    assert "input_data" in request_problems(model, {"data": [[1, 2, 3]]})[0]


def test_a_folder_without_mlmodel_is_refused(tmp_path):
    with pytest.raises(MLmodelError, match="MLmodel"):
        read_mlmodel(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors: {sklearn: {}}\n")
    with pytest.raises(MLmodelError, match="python_function"):
        read_mlmodel(tmp_path)


def test_validate_locates_a_missing_mlmodel_and_a_request_that_misses_the_signature(
    cli, mlflow_project, tmp_path
):
    manifest = _copy(mlflow_project, tmp_path)
    assert cli("validate", manifest).exit_code == 0
    request = manifest.parent / "sample-request.json"
    request.write_text(json.dumps({"input_data": {"columns": ["x1", "x2"], "data": [[1.0, 2.0]]}}))
    wrong = cli("validate", manifest, "--json")
    assert wrong.exit_code == ExitCode.USAGE
    assert wrong.json()["problems"][0]["field"] == "smoke_test.request"
    assert "lacks x3" in wrong.json()["problems"][0]["message"]
    (manifest.parent / "model" / "MLmodel").unlink()
    missing = cli("validate", manifest, "--json")
    assert missing.exit_code == ExitCode.USAGE
    assert missing.json()["problems"][0]["field"] == "model.path"


def test_without_flavor_mlflow_a_scoring_section_is_still_required(cli, mlflow_project, tmp_path):
    manifest = _copy(mlflow_project, tmp_path)
    manifest.write_text(manifest.read_text().replace("  flavor: mlflow", "  flavor: sklearn"))
    result = cli("validate", manifest, "--json")
    assert result.exit_code == ExitCode.USAGE
    assert [(p["field"], p["message"]) for p in result.json()["problems"]] == [("scoring", "required")]


def test_the_package_holds_a_generated_entry_script(cli, mlflow_project, tmp_path):
    manifest = _copy(mlflow_project, tmp_path)
    first = cli("package", manifest, "-o", tmp_path / "a", "--json")
    again = cli("package", manifest, "-o", tmp_path / "b", "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json()["package_id"] == again.json()["package_id"]
    with tarfile.open(first.json()["path"]) as archive:
        script = archive.extractfile("code/score.py").read().decode()  # type: ignore[union-attr]
        lock = json.load(io.TextIOWrapper(archive.extractfile("package.json")))  # type: ignore[arg-type]
    assert 'MODEL_FOLDER = "model"' in script and "mlflow.pyfunc.load_model" in script
    assert lock["scoring"]["script"] == "code/score.py"
    assert "code/score.py" in {f["path"] for f in lock["files"]}


def test_an_mlflow_model_deploys_without_a_script_and_takes_azure_mls_request_formats(
    cli, mlflow_project, tmp_path
):
    manifest = _copy(mlflow_project, tmp_path)
    (manifest.parent / "expected-response.json").write_text("[4.1, 0.1]")
    manifest.write_text(
        manifest.read_text()
        .replace("  # expect: expected-response.json", "  expect: expected-response.json")
        .replace("  # latency:  ", "  latency: {requests: 20, warmup: 2}  #")
    )
    assert "expect: expected-response.json" in manifest.read_text()
    requests = {
        "split": {
            "input_data": {"columns": ["x1", "x2", "x3"], "index": [7, 8], "data": [[1, 2, 3], [0, 0, 0]]}
        },
        "rows": {"input_data": [[1, 2, 3], [0, 0, 0]]},
        "reordered": {"input_data": {"columns": ["x3", "x2", "x1"], "data": [[3, 2, 1], [0, 0, 0]]}},
    }
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        assert pushed.json()["smoke"]["answer"]["passed"] is True
        for name, body in requests.items():
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(body))
            answer = cli("invoke", manifest, "--request", path, "--json")
            assert answer.exit_code == 0, (name, answer.stdout)
            assert answer.json()["response"] == pytest.approx([4.1, 0.1]), name
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"data": [[1, 2, 3]]}))
        refused = cli("invoke", manifest, "--request", path, "--json")
        assert refused.exit_code == ExitCode.BACKEND  # HTTP 500; the server logs why
        assert 'the request must look like {"input_data"' in cli("logs", manifest).stdout
    finally:
        cli("delete", manifest, "--yes")


def test_azure_ml_serves_an_mlflow_model_with_a_no_code_deployment(mlflow_project, tmp_path):
    from tdsp_deploy.backends.azureml import AzureMLBackend
    from tdsp_deploy.backends.azureml.target import AzureMLTarget
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.manifest import load_manifest
    from tdsp_deploy.pipeline import push
    from tests.fakes.azureml_fake import FakeAzureML

    manifest = _copy(mlflow_project, tmp_path)
    text = manifest.read_text().replace(
        "target:\n  kind: local",
        "target:\n  kind: azureml\n  subscription_id: 00000000-0000-0000-0000-000000000000\n"
        "  resource_group: rg-tdsp\n  workspace: ws-tdsp\n"
        "  request_settings: {max_concurrent_requests_per_instance: 2}",
    )
    manifest.write_text(text.replace("  # latency:  ", "  latency: {requests: 10, concurrency: 2}  #"))
    loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
    with FakeAzureML(polls=1).serve() as fake:
        fake.answer = b"[4.1, 0.1]"
        result = push(loaded, AzureMLBackend(loaded.manifest, client=fake))
        assert result.traffic == {"blue": 100}
        registered = next(m["entity"] for m in fake.models.values())
        assert registered.type == "mlflow_model" and (Path(registered.path) / "MLmodel").is_file()
        deployment = fake.deployments["mlflow-model"]["blue"]["entity"]
        assert deployment.code_configuration is None and deployment.environment is None
        assert not fake.environments  # Azure ML builds it from the MLmodel file

    rendered = tmp_path / "rendered"
    backend = AzureMLBackend(loaded.manifest, client=None)
    from tdsp_deploy.packaging import build_package

    built = build_package(loaded.manifest, tmp_path / "dist")
    backend.render(built, rendered)
    import yaml

    document = yaml.safe_load((rendered / "deployment.yml").read_text())
    assert document["model"]["type"] == "mlflow_model"
    assert "code_configuration" not in document and "environment" not in document


def test_the_fake_refuses_a_custom_model_without_code(tmp_path):
    from types import SimpleNamespace

    from tests.fakes.azureml_fake import FakeAzureML

    fake = FakeAzureML(polls=1)
    custom = SimpleNamespace(type="custom_model", path=str(tmp_path))
    deployment = SimpleNamespace(code_configuration=None, environment=None, model=custom)
    from tdsp_deploy.backends.azureml.translate import Doing
    from tdsp_deploy.errors import TdspError

    with pytest.raises(TdspError) as refused:
        fake._check_code(deployment, Doing("deploy 'blue'", endpoint="e", deployment="blue"))
    assert "scoring script and an environment are required" in refused.value.format_message()


def test_the_signature_fills_the_columns_of_a_tabular_target(cli, mlflow_project, tmp_path):
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
    from tdsp_deploy.manifest import load_manifest

    manifest = _copy(mlflow_project, tmp_path)
    manifest.write_text(
        manifest.read_text().replace(
            "target:\n  kind: local",
            "target:\n  kind: sqlserver\n  server: localhost\n  database: models\n"
            "  auth: {method: sql, username: u, password_env: SQL_PASSWORD}",
        )
    )
    target = load_manifest(manifest, targets=(LocalTarget, SqlServerTarget)).manifest.target
    assert [(c.name, c.type) for c in target.inputs] == [("x1", "float"), ("x2", "float"), ("x3", "float")]
    assert [(c.name, c.type) for c in target.outputs] == [("prediction", "float")]
    # columns the manifest names win over the signature's
    manifest.write_text(
        manifest.read_text().replace(
            "password_env: SQL_PASSWORD}", "password_env: SQL_PASSWORD}\n  inputs: [{name: a, type: int}]"
        )
    )
    target = load_manifest(manifest, targets=(LocalTarget, SqlServerTarget)).manifest.target
    assert [c.name for c in target.inputs] == ["a"] and [c.name for c in target.outputs] == ["prediction"]


def test_an_mlflow_model_without_an_environment_section_gets_the_models_own(cli, mlflow_project, tmp_path):
    import yaml

    from tdsp_deploy.mlflow_model import model_environment

    manifest = _copy(mlflow_project, tmp_path)
    doc = yaml.safe_load(manifest.read_text())
    doc.pop("environment", None)  # as a no-code deployment on Azure ML: the model says what it needs
    doc.setdefault("smoke_test", {})["latency"] = {"requests": 4, "concurrency": 1, "warmup": 0}
    manifest.write_text(yaml.safe_dump(doc))
    carried = model_environment(manifest.parent / "model")
    assert carried is not None and carried.conda_file == (manifest.parent / "model" / "conda.yaml").resolve()
    assert "mlflow-skinny" in carried.conda_file.read_text()  # what the starter saved it with
    validated = cli("validate", manifest)
    assert validated.exit_code == 0 and "declares no environment" not in validated.stderr
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
        slot = cli("status", manifest, "--json").json()["slots"][0]
        environment = slot["details"]["environment"]
        assert environment["hash"] != "shared" and environment["declared_in"] == str(carried.conda_file)
        body = tmp_path / "rows.json"
        body.write_text(json.dumps({"input_data": [[1, 2, 3], [0, 0, 0]]}))
        answer = cli("invoke", manifest, "--request", body, "--json")
        assert answer.exit_code == 0, answer.stdout
        assert answer.json()["response"] == pytest.approx([4.1, 0.1])
    finally:
        cli("delete", manifest, "--yes")


def test_the_model_environment_prefers_the_conda_file_azure_ml_reads(tmp_path):
    from tdsp_deploy.mlflow_model import model_environment

    model = tmp_path / "model"
    model.mkdir()
    assert model_environment(model) is None  # no MLmodel: not an MLflow model
    (model / "MLmodel").write_text(
        "flavors:\n  python_function:\n    env: env.yaml\n    python_version: 3.10.4\n"
    )
    assert model_environment(model) is None  # it names a file it does not carry
    (model / "requirements.txt").write_text("mlflow\n")
    assert model_environment(model) == type(model_environment(model))(
        None, model / "requirements.txt", "3.10.4"
    )
    (model / "env.yaml").write_text("dependencies: [python=3.12]\n")
    (model / "python_env.yaml").write_text("python: 3.12.3\n")
    found = model_environment(model)
    assert found is not None and found.conda_file == model / "env.yaml" and found.python == "3.12.3"
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    env: ../outside.yaml\n")
    (tmp_path / "outside.yaml").write_text("dependencies: []\n")
    assert model_environment(model).conda_file is None  # type: ignore[union-attr]
