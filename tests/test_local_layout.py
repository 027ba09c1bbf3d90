"""A deployment on the local target sees what it would see in Azure ML's container: the model
under ``azureml-models/<model name>/<version>/``, the manifest's variables and the platform's,
nothing of the CLI's own environment; and its log holds no error when all is well."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

SCRIPT = """\
import json, os

def init():
    global seen
    root = os.environ["AZUREML_MODEL_DIR"]
    seen = {
        "model_dir": root,
        "beneath": sorted(os.listdir(root)),
        "weights": open(os.path.join(root, "model", "weights.txt")).read(),
        "variables": sorted(os.environ),
        "greeting": os.environ.get("GREETING"),
        "cwd": os.getcwd(),
        "app_root": os.environ.get("AML_APP_ROOT"),
    }
    print("init printed this")

def run(raw_data):
    print("run printed this")
    return seen
"""


def _manifest(root: Path, *, http_server: str, version: str | None = "3") -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("0.5 0.25")
    (root / "src").mkdir()
    (root / "src" / "score.py").write_text(SCRIPT)
    (root / "request.json").write_text("{}")
    model = {"path": "model/", "name": "iris-model"}
    if version:
        model["version"] = version
    manifest = root / "deploy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": f"layout-{http_server}",
                "model": model,
                "scoring": {"code": "src/", "script": "score.py"},
                "environment": {"variables": {"GREETING": "hello"}},
                "target": {"kind": "local", "http_server": http_server},
                "smoke_test": {"request": "request.json", "latency": {"requests": 2, "concurrency": 1, "warmup": 0}},
            }
        )
    )
    return manifest


@pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
def test_the_deployment_sees_azure_mls_layout_and_none_of_the_clis_environment(
    cli, tmp_path, monkeypatch, http_server
):
    # what a developer's shell or a CI job typically holds, and no deployment may see
    monkeypatch.setenv("SQL_PASSWORD", "hunter2-planted")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "planted-client-secret")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "00000000-planted")
    manifest = _manifest(tmp_path / "app", http_server=http_server)
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        seen = cli("invoke", manifest, "--request", tmp_path / "app" / "request.json", "--json").json()["response"]
        assert re.search(r"/azureml-models/iris-model/3$", seen["model_dir"]), seen["model_dir"]
        assert seen["beneath"] == ["model"] and seen["weights"] == "0.5 0.25"
        assert seen["greeting"] == "hello"
        for planted in ("SQL_PASSWORD", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID", "TDSP_DEPLOY_HOME"):
            assert planted not in seen["variables"]
        assert {"AZUREML_MODEL_DIR", "AML_APP_ROOT", "PATH"} <= set(seen["variables"])
        assert seen["cwd"] == seen["app_root"]

        log = cli("logs", manifest, "--tail", "1000").stdout
        assert " E " not in log and " W " not in log and "Traceback" not in log, log
        assert "Found extra keys" not in log and "Error while fetching model IDs" not in log
        # print() in init() and in run() reaches the log, once each
        assert log.count("init printed this") == 1, log
        assert log.count("run printed this") >= 1
    finally:
        cli("delete", manifest, "--yes")


def test_a_version_from_the_content_hash_is_laid_out_as_version_1(cli, tmp_path):
    manifest = _manifest(tmp_path / "app", http_server="granian", version=None)
    try:
        assert cli("push", manifest).exit_code == 0
        answer = cli("invoke", manifest, "--request", tmp_path / "app" / "request.json", "--json").json()
        assert "/azureml-models/iris-model/1" in json.dumps(answer)
        log = cli("logs", manifest, "--tail", "1000").stdout
        assert "Error while fetching model IDs" not in log
    finally:
        cli("delete", manifest, "--yes")


@pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
def test_a_scoring_folder_that_is_a_package_deploys(cli, tmp_path, http_server):
    """A scoring folder with an __init__.py made every push under granian crash-loop with
    "Could not import 'code.tdsp_deploy.backends.local.slot_app'"."""
    manifest = _manifest(tmp_path / "app", http_server=http_server)
    (tmp_path / "app" / "src" / "__init__.py").write_text("")
    try:
        pushed = cli("push", manifest)
        assert pushed.exit_code == 0, pushed.stderr
    finally:
        cli("delete", manifest, "--yes")
