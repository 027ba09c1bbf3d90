"""`init --target T --flavor F`: every starter validates as written, and the local ones answer."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tdsp_deploy.errors import ExitCode
from tdsp_deploy.starter import FLAVORS

STARTERS = [(target, flavor) for target, flavors in FLAVORS.items() for flavor in flavors]


def _flavor_args(flavor: str) -> list[str]:
    return [] if flavor == "plain" else ["--flavor", flavor]


@pytest.mark.parametrize(("target", "flavor"), STARTERS, ids=[f"{t}-{f}" for t, f in STARTERS])
def test_every_starter_validates_as_written(cli, tmp_path, target, flavor):
    project = tmp_path / "starter"
    created = cli("init", project, "--target", target, *_flavor_args(flavor), "--json")
    assert created.exit_code == 0, created.stdout
    manifest = project / "deploy.yaml"
    validated = cli("validate", manifest, "--json")
    assert validated.exit_code == 0, validated.stdout
    assert validated.json()["target"] == target
    text = manifest.read_text()
    assert "{{" not in text
    document = yaml.safe_load(text)
    assert document["target"]["kind"] == target
    assert (document["model"].get("flavor") or "plain") == flavor
    assert ("scoring" in document) == (flavor != "mlflow")
    # the editor's schema: named on the first line, written beside the manifest, and it accepts it
    modeline = re.match(r"# yaml-language-server: \$schema=(\S+)", text)
    assert modeline is not None
    schema = json.loads((project / modeline.group(1)).read_text())
    jsonschema.validate(document, schema)
    assert json.loads((project / "sample-request.json").read_text())


def test_starters_refuse_what_they_do_not_offer(cli, tmp_path):
    unknown = cli("init", tmp_path / "a", "--target", "nowhere", "--json")
    assert unknown.exit_code == ExitCode.USAGE and "local" in unknown.json()["hint"]
    flavorless = cli("init", tmp_path / "b", "--target", "local", "--flavor", "pytorch", "--json")
    assert flavorless.exit_code == ExitCode.USAGE and "mlflow" in flavorless.json()["hint"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_starter_does_not_overwrite_anything_unless_forced(cli, tmp_path):
    project = tmp_path / "starter"
    project.mkdir()
    (project / "score.py").write_text("# mine\n")
    refused = cli("init", project, "--flavor", "onnx")
    assert refused.exit_code == ExitCode.USAGE and "score.py" in refused.stderr
    assert (project / "score.py").read_text() == "# mine\n"
    assert not (project / "deploy.yaml").exists()  # nothing half written
    assert cli("init", project, "--flavor", "onnx", "--force").exit_code == 0
    assert "onnxruntime" in (project / "score.py").read_text()


@pytest.mark.parametrize("flavor", ["sklearn", "onnx"])
def test_local_starters_push_and_answer_the_same(cli, tmp_path, flavor):
    project = tmp_path / flavor
    assert cli("init", project, "--name", f"starter-{flavor}", "--flavor", flavor).exit_code == 0
    manifest = project / "deploy.yaml"
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stdout
        answer = cli("invoke", manifest, "--request", project / "sample-request.json", "--json")
        assert answer.json()["response"]["predictions"] == pytest.approx([4.1, 0.1], abs=1e-5)
    finally:
        cli("delete", manifest, "--yes")


@pytest.mark.parametrize("flavor", ["sklearn", "onnx"])
def test_the_synapse_starters_batch_function_scores_a_dataframe(cli, tmp_path, flavor):
    import importlib.util

    import pandas as pd

    project = tmp_path / flavor
    assert cli("init", project, "--target", "synapse", "--flavor", flavor).exit_code == 0
    spec = importlib.util.spec_from_file_location(f"starter_score_{flavor}", project / "score.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if flavor == "sklearn":
        import joblib

        model = joblib.load(project / "model" / "model.pkl")
    else:
        import onnxruntime

        model = onnxruntime.InferenceSession(str(project / "model" / "model.onnx"))
    rows = pd.DataFrame([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], columns=["x1", "x2", "x3"])
    result = module.predict(model, rows)
    assert list(result.columns) == ["prediction"]
    assert result["prediction"].tolist() == pytest.approx([4.1, 0.1], abs=1e-5)
