"""Opt-in: the iris example pushed to a real Azure ML workspace, called, canaried, deleted.

Runs only when AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE are set and
DefaultAzureCredential can sign in (`az login`, or AZURE_CLIENT_ID / AZURE_TENANT_ID /
AZURE_CLIENT_SECRET). Optional: AZUREML_INSTANCE_TYPE (default Standard_DS3_v2; it needs quota
for two instances). It creates an endpoint with a random name and deletes it at the end,
whatever happened; expect 20-40 minutes and the cost of two small VMs for that time.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
import yaml

from tests import paths

REQUIRED = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE")
EXAMPLE = paths.EXAMPLES / "iris"

pytestmark = [
    pytest.mark.skipif(
        not all(os.environ.get(name) for name in REQUIRED),
        reason=f"live Azure ML test: set {', '.join(REQUIRED)} to run it",
    ),
    pytest.mark.timeout(4 * 3600),
]


def iris_on_azureml(root: Path, endpoint: str) -> Path:
    """A copy of examples/iris whose target is the workspace from the environment."""
    project = root / "iris"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = project / "deploy.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["name"] = endpoint
    doc["target"] = {
        "kind": "azureml",
        "subscription_id": "${AZURE_SUBSCRIPTION_ID}",
        "resource_group": "${AZURE_RESOURCE_GROUP}",
        "workspace": "${AZUREML_WORKSPACE}",
        "instance_type": os.environ.get("AZUREML_INSTANCE_TYPE", "Standard_DS3_v2"),
        "instance_count": 1,
        "request_settings": {"max_concurrent_requests_per_instance": 2},
        "timeout": 3600,
        "tags": {"purpose": "tdsp-deploy-live-test"},
    }
    # latency over the internet says nothing about the model: count errors, not milliseconds
    doc["smoke_test"]["latency"] = {"requests": 20, "concurrency": 2, "warmup": 2, "max_error_rate": 0.0}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def test_iris_push_invoke_canary_delete(tmp_path: Path) -> None:
    from tdsp_deploy.backends.azureml import AzureMLBackend
    from tdsp_deploy.backends.azureml.target import AzureMLTarget
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.manifest import load_manifest
    from tdsp_deploy.pipeline import push
    from tdsp_deploy.smoke import json_differences

    endpoint = f"tdsp-iris-{secrets.token_hex(4)}"
    manifest = iris_on_azureml(tmp_path, endpoint)
    expected = json.loads((manifest.parent / "expected-response.json").read_text())
    request = (manifest.parent / "sample-request.json").read_bytes()

    def load() -> tuple[object, AzureMLBackend]:
        loaded = load_manifest(manifest, targets=(LocalTarget, AzureMLTarget))
        return loaded, AzureMLBackend(loaded.manifest, progress=lambda event: print(event.message))

    loaded, backend = load()
    try:
        first = push(loaded, backend)  # type: ignore[arg-type]
        assert first.deployment == "blue" and first.traffic == {"blue": 100}
        answer = backend.invoke(request)
        assert answer.status == 200 and answer.deployment == "blue"
        assert json_differences(expected, answer.json(), 1e-4) == []

        # a second slot takes 10% of the traffic; blue keeps the rest
        score = manifest.parent / "src" / "score.py"
        score.write_text(score.read_text() + "\n# live test: a new revision\n")
        doc = yaml.safe_load(manifest.read_text())
        doc["rollout"] = {"traffic": 10}
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        loaded, backend = load()
        second = push(loaded, backend)  # type: ignore[arg-type]
        assert second.deployment == "green"
        assert second.traffic == {"blue": 90, "green": 10}
        assert second.model_version == first.model_version  # same model: not uploaded again
        assert backend.invoke(request, slot="green").deployment == "green"
        assert isinstance(backend.logs("green", tail=50), str)  # the inference server's log
        assert set(backend.credentials()) == {"primary_key", "secondary_key"}
    finally:
        _, cleanup = load()
        if cleanup.status().exists:
            cleanup.delete()
    assert not cleanup.status().exists
