"""Traffic on the real local target: canary split, sticky keys, pinning, mirror, rollback,
and the request log and metrics the router keeps."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.fakes.endpoint_client import Client

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def canary(cli, iris):  # type: ignore[no-untyped-def]
    """blue at 100%, then green (a new version) pushed as a 10% canary, with sticky users."""
    doc = yaml.safe_load(iris.read_text())
    doc["rollout"] = {"sticky_header": "x-user-id"}
    doc["smoke_test"]["latency"] = {"requests": 20, "concurrency": 2, "warmup": 0}
    iris.write_text(yaml.safe_dump(doc))
    try:
        assert cli("push", iris).exit_code == 0
        doc["environment"]["variables"]["LOG_LEVEL"] = "debug"  # a new version
        doc["rollout"]["traffic"] = 10
        iris.write_text(yaml.safe_dump(doc))
        pushed = cli("push", iris, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        assert pushed.json()["traffic"] == {"blue": 90, "green": 10}
        key = cli("credentials", iris, "--json").json()["primary_key"]
        yield iris, Client(pushed.json()["scoring_uri"], key)
    finally:
        cli("delete", iris, "--yes")


def body_of(manifest: Path) -> bytes:
    return (manifest.parent / "sample-request.json").read_bytes()


def test_canary_takes_its_share_and_sticky_users_stay_put(cli, canary):
    manifest, client = canary
    body = body_of(manifest)
    served = Counter(client.post(body)[1]["azureml-model-deployment"] for _ in range(2000))
    assert abs(served["green"] / 2000 - 0.10) <= 0.025, served
    users: dict[str, set[str]] = {}
    for _ in range(3):
        for user in range(60):
            slot = client.post(body, x_user_id=f"user-{user}")[1]["azureml-model-deployment"]
            users.setdefault(f"user-{user}", set()).add(slot)
    assert all(len(slots) == 1 for slots in users.values())
    pinned = Counter(
        client.post(body, azureml_model_deployment="green")[1]["azureml-model-deployment"] for _ in range(50)
    )
    assert pinned == {"green": 50}


def test_rollback_restores_the_previous_split(cli, canary):
    manifest, client = canary
    back = cli("rollback", manifest, "--json")
    assert back.exit_code == 0 and back.json()["traffic"] == {"blue": 100, "green": 0}
    body = body_of(manifest)
    assert {client.post(body)[1]["azureml-model-deployment"] for _ in range(100)} == {"blue"}


def test_mirror_never_changes_what_the_caller_gets(cli, canary, state_home):
    manifest, client = canary
    assert cli("traffic", manifest, "blue=100", "--mirror", "green=50").exit_code == 0
    body = body_of(manifest)
    expected = json.loads((manifest.parent / "expected-response.json").read_text())
    for _ in range(200):
        status, headers, answer = client.post(body)
        assert status == 200 and headers["azureml-model-deployment"] == "blue"
        assert json.loads(answer) == expected
    time.sleep(1.5)  # shadow answers land in the log within a second
    records = [
        json.loads(line)
        for line in (state_home / "endpoints" / "iris" / "requests.jsonl").read_text().splitlines()
    ]
    shadows = [r for r in records if r["kind"] == "shadow" and r["deployment"] == "green"]
    assert 60 <= len(shadows) <= 140  # ~50% of 200
    assert all(r["agreed"] is True for r in shadows)  # same model, same answers
    metrics = client.get("/metrics").decode()
    assert 'tdsp_shadow_answers_total{endpoint="iris",deployment="green",agreed="true"}' in metrics
    status = cli("status", manifest, "--json").json()
    assert status["mirror"] == {"green": 50}
