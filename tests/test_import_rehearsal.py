"""`tdsp-deploy import ... --target local`: az ml YAML shaped as Azure's public samples are
(endpoint + blue/green deployments, a no-code MLflow deployment, a sample request beside the
YAML) becomes manifests that validate and push with no hand edit."""

from __future__ import annotations

import json
import pickle
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
                    "code_configuration": {"code": f"../../model-{number}/onlinescoring/", "scoring_script": "score.py"},
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
        "import", sample / "endpoint.yml", sample / "blue-deployment.yml", sample / "green-deployment.yml",
        "--target", "local", "-o", samples, "--json",
    )  # fmt: skip
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
        pinned = cli("invoke", green, "--request", samples / "managed/sample/sample-request.json",
                     "--deployment", "green", "--json")  # fmt: skip
        assert pinned.json()["response"] == [7.0, 6.0]
        live = cli("invoke", blue, "--request", samples / "managed/sample/sample-request.json", "--json")
        assert live.json()["response"] == [3.0, 2.0]
    finally:
        cli("delete", blue, "--yes")


def test_an_mlflow_no_code_deployment_becomes_the_mlflow_flavor(cli, samples):
    sample = samples / "managed" / "sample"
    mlflow_model = samples / "ncd" / "model"
    mlflow_model.mkdir(parents=True)
    (mlflow_model / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n    python_version: 3.11.7\n"
        "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
    )
    (mlflow_model / "model.pkl").write_bytes(pickle.dumps([1.0]))
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
    written = cli("import", sample / "endpoint.yml", samples / "ncd" / "deployment.yml", "--target", "local",
                  "--request", sample / "sample-request.json", "-o", "-")  # fmt: skip
    assert written.exit_code == 0, written.stderr
    assert not Path("-").exists()
    doc = yaml.safe_load(written.stdout)
    assert doc["model"]["flavor"] == "mlflow" and "scoring" not in doc
    assert doc["model"]["name"] == "sklearn-diabetes" and doc["model"]["version"] == "1"
    assert doc["rollout"]["deployment"] == "sklearn-deployment"


def test_a_placeholder_of_the_sample_gets_a_precise_message(cli, samples):
    sample = samples / "managed" / "sample"
    (sample / "endpoint.yml").write_text("name: <endpoint_name>\nauth_mode: key\n")
    result = cli("import", sample / "endpoint.yml", sample / "blue-deployment.yml", "--target", "local", "--json")
    assert result.exit_code == ExitCode.USAGE
    doc = result.json()
    assert "endpoint.yml:1: name: '<endpoint_name>' is a placeholder" in doc["message"]
    assert "replace <endpoint_name>" in doc["hint"]
