"""`tdsp-deploy import ... --target local`: az ml YAML shaped as Azure's public samples are
(endpoint + blue/green deployments, a no-code MLflow deployment, a sample request beside the
YAML) becomes manifests that validate and push with no hand edit."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.errors import ExitCode

SCORE = """\
import json, os, pickle

def init():
    global weights
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.pkl"), "rb") as f:
        weights = pickle.load(f)

def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return [sum(w * x for w, x in zip(weights, row)) for row in rows]
"""


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """online/managed/sample/{endpoint,blue-deployment,green-deployment}.yml beside a sample
    request, each deployment pointing at ../../model-N/{model,onlinescoring,environment}."""
    online = tmp_path / "online"
    for number, weights in ((1, [1.0, 2.0]), (2, [3.0, 4.0])):
        model = online / f"model-{number}"
        (model / "model").mkdir(parents=True)
        (model / "model" / "weights.pkl").write_bytes(pickle.dumps(weights))
        (model / "onlinescoring").mkdir()
        (model / "onlinescoring" / "score.py").write_text(SCORE)
        (model / "environment").mkdir()
        (model / "environment" / "conda.yaml").write_text(
            yaml.safe_dump({"name": "model-env", "dependencies": ["python=3.11", "pip", {"pip": []}]})
        )
    sample = online / "managed" / "sample"
    sample.mkdir(parents=True)
    (sample / "endpoint.yml").write_text("name: my-endpoint\nauth_mode: key\n")
    for number, slot in ((1, "blue"), (2, "green")):
        (sample / f"{slot}-deployment.yml").write_text(
            yaml.safe_dump(
                {
                    "name": slot,
                    "endpoint_name": "my-endpoint",
                    "model": {"path": f"../../model-{number}/model/"},
                    "code_configuration": {
                        "code": f"../../model-{number}/onlinescoring/",
                        "scoring_script": "score.py",
                    },
                    "environment": {
                        "conda_file": f"../../model-{number}/environment/conda.yaml",
                        "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
                    },
                    "instance_type": "Standard_DS3_v2",
                    "instance_count": 1,
                }
            )
        )
    (sample / "sample-request.json").write_text(json.dumps({"data": [[1, 1], [2, 0]]}))
    return online


def test_blue_and_green_import_and_push_locally_with_no_hand_edit(cli, samples):
    sample = samples / "managed" / "sample"
    imported = cli(
        "import",
        sample / "endpoint.yml",
        sample / "blue-deployment.yml",
        sample / "green-deployment.yml",
        "--target",
        "local",
        "-o",
        samples,
        "--json",
    )
    assert imported.exit_code == 0, imported.stdout + imported.stderr
    blue, green = (samples / "deploy-blue.yaml", samples / "deploy-green.yaml")
    assert imported.json()["manifests"] == [str(blue), str(green)]
    doc = yaml.safe_load(blue.read_text())
    assert doc["target"] == {"kind": "local"}
    assert doc["model"]["path"] == "model-1/model" and doc["scoring"]["code"] == "model-1/onlinescoring"
    assert doc["smoke_test"] == {"request": "managed/sample/sample-request.json"}
    assert doc["rollout"] == {"deployment": "blue"} and "image" not in doc["environment"]
    assert yaml.safe_load(green.read_text())["rollout"] == {"deployment": "green", "traffic": 0}
    warnings = " ".join(imported.json()["warnings"])
    assert "instance_type" in warnings and "${AZURE_SUBSCRIPTION_ID}" not in warnings
    try:
        first = cli("push", blue, "--json")
        assert first.exit_code == 0, first.stdout + first.stderr
        second = cli("push", green, "--json")
        assert second.exit_code == 0, second.stdout + second.stderr
        assert second.json()["traffic"] == {"blue": 100, "green": 0}
        pinned = cli(
            "invoke",
            green,
            "--request",
            samples / "managed/sample/sample-request.json",
            "--deployment",
            "green",
            "--json",
        )
        assert pinned.json()["response"] == [7.0, 6.0]
        live = cli("invoke", blue, "--request", samples / "managed/sample/sample-request.json", "--json")
        assert live.json()["response"] == [3.0, 2.0]
    finally:
        cli("delete", blue, "--yes")


def _mlflow_model_folder(folder: Path, *, conda: str | None = None) -> None:
    """An MLflow model's files as a no-code sample has them (MLmodel, the pickle, its conda file)."""
    folder.mkdir(parents=True)
    env = "    env: conda.yaml\n" if conda else ""
    (folder / "MLmodel").write_text(
        f"flavors:\n  python_function:\n{env}    loader_module: mlflow.sklearn\n    python_version: 3.11.7\n"
        "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
    )
    (folder / "model.pkl").write_bytes(pickle.dumps([1.0]))
    if conda:
        (folder / "conda.yaml").write_text(conda)


def test_an_mlflow_no_code_deployment_becomes_the_mlflow_flavor(cli, samples):
    sample = samples / "managed" / "sample"
    _mlflow_model_folder(samples / "ncd" / "model")
    (samples / "ncd" / "deployment.yml").write_text(
        yaml.safe_dump(
            {
                "name": "sklearn-deployment",
                "endpoint_name": "my-endpoint",
                "model": {"name": "sklearn-diabetes", "version": 1, "path": "model", "type": "mlflow_model"},
                "instance_type": "Standard_DS3_v2",
                "instance_count": 1,
            }
        )
    )
    written = cli(
        "import",
        sample / "endpoint.yml",
        samples / "ncd" / "deployment.yml",
        "--target",
        "local",
        "--request",
        sample / "sample-request.json",
        "-o",
        "-",
    )
    assert written.exit_code == 0, written.stderr
    assert not Path("-").exists()
    doc = yaml.safe_load(written.stdout)
    assert doc["model"]["flavor"] == "mlflow" and "scoring" not in doc
    assert doc["model"]["name"] == "sklearn-diabetes" and doc["model"]["version"] == "1"
    assert doc["rollout"]["deployment"] == "sklearn-deployment"


def test_a_placeholder_of_the_sample_gets_a_precise_message(cli, samples):
    sample = samples / "managed" / "sample"
    (sample / "endpoint.yml").write_text("name: <endpoint_name>\nauth_mode: key\n")
    result = cli(
        "import", sample / "endpoint.yml", sample / "blue-deployment.yml", "--target", "local", "--json"
    )
    assert result.exit_code == ExitCode.USAGE
    doc = result.json()
    assert "endpoint.yml:1: name: '<endpoint_name>' is a placeholder" in doc["message"]
    assert "replace <endpoint_name>" in doc["hint"]


# A scoring script whose run() takes named parameters, cast and checked by inference-schema's
# decorators (the server calls it with the request's keys as arguments).
SCHEMA_SCORE = """\
import json, os

from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    global scale
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights", "scale.json")) as f:
        scale = json.load(f)["scale"]


@input_schema(param_name="width", param_type=StandardPythonParameterType([1.0]))
@input_schema(param_name="height", param_type=StandardPythonParameterType([1.0]))
@output_schema(output_type=StandardPythonParameterType({"area": [1.0]}))
def run(width, height):
    return {"area": [scale * w * h for w, h in zip(width, height)]}
"""


def test_an_inference_schema_sample_with_a_registered_model_and_placeholders_pushes_unedited(cli, tmp_path):
    """The shape of managed/inference-schema: no endpoint YAML (the endpoint is created by name),
    `endpoint_name: <endpoint_name>`, the model registered from a model YAML beside the deployment,
    inference-schema declared only in the sample's conda file, the request under sample-inputs/."""
    sample = tmp_path / "managed" / "inference-schema"
    (sample / "code").mkdir(parents=True)
    (sample / "code" / "score-standard.py").write_text(SCHEMA_SCORE)
    (sample / "weights").mkdir()
    (sample / "weights" / "scale.json").write_text('{"scale": 0.5}')
    (sample / "model.yml").write_text("name: schema-sample-model\nversion: 1\npath: weights\n")
    here = ".".join(map(str, sys.version_info[:2]))
    (sample / "env.yml").write_text(
        yaml.safe_dump(
            {
                "name": "schema-env",
                "dependencies": [
                    f"python={here}",
                    "pip",
                    {"pip": ["azureml-inference-server-http", "inference-schema"]},
                ],
            }
        )
    )
    (sample / "deployment-standard.yml").write_text(
        "name: schema-standard\nendpoint_name: <endpoint_name>\nmodel: azureml:schema-sample-model:1\n"
        "code_configuration:\n  code: code\n  scoring_script: score-standard.py\n"
        "environment:\n  image: mcr.microsoft.com/azureml/minimal-py312-inference:latest\n"
        "  conda_file: env.yml\n"
        "instance_type: Standard_DS3_v2\ninstance_count: 1\n"
    )
    (sample / "sample-inputs").mkdir()
    (sample / "sample-inputs" / "standard.json").write_text(
        json.dumps({"width": [2.0, 3.0], "height": [4.0, 1.0]})
    )
    manifest = sample / "deploy.yaml"
    imported = cli(
        "import",
        "schema-demo",
        sample / "deployment-standard.yml",
        "--target",
        "local",
        "--request",
        sample / "sample-inputs" / "standard.json",
        "-o",
        manifest,
        "--json",
    )
    assert imported.exit_code == 0, imported.stdout + imported.stderr
    doc = yaml.safe_load(manifest.read_text())
    assert doc["name"] == "schema-demo"
    assert doc["model"] == {"path": "weights", "name": "schema-sample-model", "version": "1"}
    assert doc["environment"] == {"conda_file": "env.yml"}
    assert doc["smoke_test"] == {"request": "sample-inputs/standard.json"}
    assert any("model.yml" in w for w in imported.json()["warnings"])
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
        answer = cli("invoke", manifest, "--request", sample / "sample-inputs" / "standard.json", "--json")
        assert answer.json()["response"] == {"area": [4.0, 1.5]}
    finally:
        cli("delete", manifest, "--yes")


def test_a_placeholder_other_than_the_endpoint_name_is_still_refused(cli, samples):
    sample = samples / "managed" / "sample"
    text = (
        (sample / "blue-deployment.yml")
        .read_text()
        .replace("scoring_script: score.py", "scoring_script: <SCRIPT>")
    )
    (sample / "blue-deployment.yml").write_text(
        text.replace("endpoint_name: my-endpoint", "endpoint_name: <name>")
    )
    result = cli(
        "import", sample / "endpoint.yml", sample / "blue-deployment.yml", "--target", "local", "--json"
    )
    assert result.exit_code == ExitCode.USAGE
    assert "scoring_script: '<SCRIPT>' is a placeholder" in result.json()["message"]


def test_a_no_code_sample_finds_its_own_sample_request_and_validates_with_the_models_environment(
    cli, tmp_path
):
    """The shape of ncd/: create-endpoint.yaml, <flavor>-deployment.yaml per model, and one
    sample-request-<flavor>.json per model beside them; the MLflow model carries its conda file."""
    ncd = tmp_path / "ncd"
    _mlflow_model_folder(
        ncd / "regression" / "model", conda="dependencies:\n- python=3.11\n- pip:\n  - mlflow-skinny\n"
    )
    (ncd / "create-endpoint.yaml").write_text("name: ncd-endpoint\nauth_mode: key\n")
    (ncd / "sklearn-deployment.yaml").write_text(
        "name: sklearn-deployment\nendpoint_name: ncd-endpoint\n"
        "model:\n  name: regression-model\n  version: 2\n"
        "  path: regression/model\n  type: mlflow_model\ninstance_type: Standard_DS3_v2\ninstance_count: 1\n"
    )
    for flavor in ("lightgbm", "sklearn"):
        (ncd / f"sample-request-{flavor}.json").write_text(json.dumps({"input_data": [[1.0]]}))
    manifest = ncd / "deploy.yaml"
    imported = cli(
        "import",
        ncd / "create-endpoint.yaml",
        ncd / "sklearn-deployment.yaml",
        "--target",
        "local",
        "-o",
        manifest,
        "--json",
    )
    assert imported.exit_code == 0, imported.stdout + imported.stderr
    doc = yaml.safe_load(manifest.read_text())
    assert doc["smoke_test"] == {"request": "sample-request-sklearn.json"}
    assert doc["model"]["flavor"] == "mlflow" and "environment" not in doc
    assert not any("sample request" in w for w in imported.json()["warnings"])
    validated = cli("validate", manifest)
    assert validated.exit_code == 0, validated.stderr
    assert "declares no environment" not in validated.stderr  # the model's conda.yaml is its environment
