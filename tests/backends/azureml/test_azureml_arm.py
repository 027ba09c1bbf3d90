"""The azureml backend through the real azure-ai-ml ``MLClient``, against an Azure Resource
Manager emulator at the HTTP transport (tests/fakes/arm/) that answers as Azure's recorded traffic
does; blob uploads go to Azurite through azure-storage-blob; the scoring URI is a loopback
front end reading the emulated workspace's keys and traffic. Nothing above the transport is
patched: the SDK's requests, retries, polling and deserialisation are its own."""

from __future__ import annotations

import json
import re

import pytest

import tests.fakes.azureml_emulated as shared
from tdsp_deploy.errors import BackendError, DeploymentFailed, LatencyObjectiveMissed, UsageError
from tdsp_deploy.pipeline import change_traffic, current_split
from tdsp_deploy.traffic import TrafficHistory, TrafficSplit
from tests.fakes.arm.transport import Reply
from tests.fakes.azureml_emulated import backend_for, live, push_fails, run_push, writes
from tests.fakes.azureml_project import EXPECTED, NAME, edit, new_model

pytestmark = shared.pytestmark  # skipped without Azurite

# the emulator's fixtures (Azurite once per module)
storage = shared.storage
azure = shared.azure
project = shared.project


# -- push ------------------------------------------------------------------------------------
def test_first_push_runs_the_recorded_sequence_through_the_real_sdk(azure, project):
    result = run_push(project, azure)

    assert result.deployment == "blue" and result.traffic == {"blue": 100}
    assert result.smoke is not None and result.smoke.passed
    assert result.scoring_uri == f"{azure.front.base_url}/{NAME}/score"
    normal = [
        re.sub(
            r"(/environments/[^/]+/versions/)[0-9a-f]+",
            r"\1<v>",
            re.sub(r"/codes/[0-9a-f-]{36}/", "/codes/<id>/", w),
        )
        for w in writes(azure)
    ]
    assert normal == [
        f"PUT /onlineEndpoints/{NAME}",  # without traffic: Azure refuses it at creation
        "POST /datastores/workspaceblobstore/listSecrets",
        f"PUT /models/iris-classifier/versions/{result.model_version}",
        f"PUT /environments/{NAME}-env/versions/<v>",
        "POST /codes/<id>/versions/1/startPendingUpload",
        "PUT /codes/<id>/versions/1",
        f"PUT /onlineEndpoints/{NAME}/deployments/blue",
        f"POST /onlineEndpoints/{NAME}/listKeys",  # the smoke test's key
        f"PUT /onlineEndpoints/{NAME}",  # traffic, after the smoke test
    ]
    # every operation was followed on its Azure-AsyncOperation URL until it succeeded
    assert all(op.status == "Succeeded" for op in azure.workspace.operations.values())
    assert len(azure.workspace.operations) == 3
    assert live(azure) == ({"blue": 100}, {})
    # the smoke requests were pinned to the new deployment before it took traffic
    assert azure.front.requests and all(
        r["pinned"] and r["deployment"] == "blue" for r in azure.front.requests
    )
    # the model went to the workspace's datastore (Azurite), under LocalUpload/<hash>/
    assert any(b.endswith("/model/weights.json") and "/LocalUpload/" in b for b in azure.blobs())


def test_status_reads_the_endpoint_and_each_deployment_from_azure(azure, project):
    assert backend_for(project, azure).status().exists is False
    result = run_push(project, azure)

    status = backend_for(project, azure).status()

    assert status.exists and status.kind == "azureml" and status.scoring_uri == result.scoring_uri
    assert status.details["provisioning_state"] == "Succeeded" and status.details["auth_mode"] == "key"
    (blue,) = status.slots
    assert (blue.name, blue.state, blue.traffic, blue.mirror) == ("blue", "healthy", 100, 0)
    # what it runs, from the tags the push gave the deployment
    assert blue.package_id == result.package_id and blue.model_version == result.model_version
    assert blue.details["instance_type"] == "Standard_DS3_v2" and blue.details["instance_count"] == 1
    assert (
        blue.details["model"]
        == f"{azure.workspace.base}/models/iris-classifier/versions/{result.model_version}"
    )


def test_the_code_upload_holds_the_scoring_code_only(azure, project):
    run_push(project, azure)

    (container,) = azure.workspace.upload_containers  # startPendingUpload's temporary container
    code = sorted(b.split("/", 2)[2] for b in azure.blobs() if b.startswith(container + "/"))
    assert code == ["requirements.txt", "score.py"]  # not deploy.yaml, not the smoke-test files


def test_same_push_again_sends_no_write(azure, project):
    run_push(project, azure)
    before = len(writes(azure))
    again = run_push(project, azure)
    assert again.unchanged is True
    assert len(writes(azure)) == before


def test_canary_second_push_keeps_blues_share(azure, project):
    first = run_push(project, azure)
    new_model(project, '{"w": [4, 5, 6]}')
    edit(project, rollout={"traffic": 10})

    result = run_push(project, azure)

    assert result.deployment == "green" and result.model_version != first.model_version
    assert live(azure) == ({"blue": 90, "green": 10}, {})
    status = backend_for(project, azure).status()
    assert {s.name: (s.state, s.traffic) for s in status.slots} == {
        "blue": ("healthy", 90),
        "green": ("healthy", 10),
    }


def test_mirror_push_shadows_the_new_deployment(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [7]}')
    edit(project, rollout={"traffic": 0, "mirror": 20})

    run_push(project, azure)

    assert live(azure) == ({"blue": 100}, {"green": 20})


def test_traffic_change_and_rollback_to_the_previous_split(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [8]}')
    edit(project, rollout={"traffic": 0})
    run_push(project, azure)
    backend = backend_for(project, azure)

    change_traffic(backend, backend.status(), TrafficSplit({"blue": 50, "green": 50}, {}), "traffic")
    assert live(azure)[0] == {"blue": 50, "green": 50}

    # what `tdsp-deploy rollback` does
    previous = TrafficHistory(backend.kind, NAME).previous()
    assert previous is not None
    change_traffic(backend, backend.status(), previous, "rollback")
    assert live(azure)[0] == {"blue": 100}
    assert {k: v for k, v in current_split(backend.status()).live.items() if v} == {"blue": 100}


def test_logs_come_from_the_deployments_getlogs(azure, project):
    run_push(project, azure)
    azure.workspace.logs[(NAME, "blue", "InferenceServer")] = "\n".join(f"line {i}" for i in range(50))

    text = backend_for(project, azure).logs("blue", tail=3)

    assert text.splitlines() == ["line 47", "line 48", "line 49"]
    (asked,) = [s for s in azure.workspace.sent if s.path.endswith("/getLogs")]
    assert asked.json() == {"containerType": "InferenceServer", "tail": 3}


def test_credentials_are_the_endpoints_keys(azure, project):
    run_push(project, azure)
    keys = backend_for(project, azure).credentials()
    assert keys == {
        "primary_key": azure.workspace.keys[NAME]["primaryKey"],
        "secondary_key": azure.workspace.keys[NAME]["secondaryKey"],
    }


def test_a_token_endpoint_is_smoke_tested_with_the_token_azure_issues(azure, project):
    edit(project, target={"auth_mode": "aml_token"})
    result = run_push(project, azure)

    assert result.smoke is not None and result.smoke.passed
    assert azure.workspace.endpoints[NAME]["properties"]["authMode"] == "AMLToken"
    credentials = backend_for(project, azure).credentials()
    assert credentials["access_token"] == azure.workspace.token
    assert any(
        s.method == "POST" and s.path.endswith(f"/onlineEndpoints/{NAME}/token") for s in azure.workspace.sent
    )


def test_invoke_reaches_the_scoring_uri_with_the_key_and_the_pin(azure, project):
    run_push(project, azure)
    backend = backend_for(project, azure)
    azure.front.requests.clear()

    with backend.callers("blue") as callers:
        answer = next(callers)(b'{"data": [[1, 2, 3, 4]]}')

    assert answer.status == 200 and json.loads(answer.body) == EXPECTED
    assert answer.deployment == "blue"
    assert azure.front.requests == [{"deployment": "blue", "pinned": True}]


def test_delete_removes_the_endpoint_through_its_operation(azure, project):
    run_push(project, azure)
    backend = backend_for(project, azure)

    backend.delete()

    assert NAME not in azure.workspace.endpoints
    assert writes(azure)[-1] == f"DELETE /onlineEndpoints/{NAME}"
    assert backend.status().exists is False


def test_switch_gives_the_new_deployment_all_the_traffic(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [7]}')

    result = run_push(project, azure)

    assert result.deployment == "green" and result.traffic == {"blue": 0, "green": 100}
    assert live(azure)[0] == {"green": 100}


def test_the_model_is_registered_once_for_unchanged_content(azure, project):
    first = run_push(project, azure)
    (project.parent / "score.py").write_text(
        "def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data  # v2\n"
    )

    second = run_push(project, azure)

    assert second.deployment == "green" and second.package_id != first.package_id
    assert second.model_version == first.model_version
    model_puts = [w for w in writes(azure) if w.startswith("PUT /models/")]
    assert model_puts == [f"PUT /models/iris-classifier/versions/{first.model_version}"]
    models = {d["properties"]["model"] for d in azure.workspace.deployments.values()}
    assert models == {f"{azure.workspace.base}/models/iris-classifier/versions/{first.model_version}"}


def test_a_pinned_model_version_with_other_content_is_refused(azure, project):
    edit(project, model={"path": "model/", "name": "iris-classifier", "version": "3"})
    run_push(project, azure)
    new_model(project, '{"w": [9]}')

    error = push_fails(project, azure)

    # the content hash went to Azure as a tag and came back with the version
    assert isinstance(error, BackendError) and "already registered with other content" in error.message
    assert "model.version" in (error.hint or "")
    assert live(azure)[0] == {"blue": 100}


def test_a_failed_update_of_the_live_deployment_gets_its_previous_revision_again(azure, project):
    edit(project, rollout={"deployment": "blue"})
    first = run_push(project, azure)
    new_model(project, '{"w": [11]}')
    azure.workspace.next_deployment_outcome = (
        "Failed",
        {"code": "ResourceNotReady", "message": "init() raised"},
    )

    error = push_fails(project, azure)

    assert isinstance(error, DeploymentFailed)
    assert "restored to its previous version" in " ".join(error.details["rollback"])
    blue = backend_for(project, azure).status().slot("blue")
    assert blue is not None and blue.state == "healthy" and blue.traffic == 100
    assert blue.package_id == first.package_id
    # first, failed, restored: the revision read back from Azure is accepted by the SDK as it is
    assert writes(azure).count(f"PUT /onlineEndpoints/{NAME}/deployments/blue") == 3


def test_delete_of_a_deployment_that_takes_traffic_is_refused_before_azure_is_asked(azure, project):
    run_push(project, azure)
    before = len(writes(azure))

    with pytest.raises(UsageError, match="takes 100% of the traffic"):
        backend_for(project, azure).delete("blue")

    assert writes(azure)[before:] == []


# -- the data plane's own refusals -----------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "headers", "says"),
    [
        (408, {}, "request_timeout_ms (5000 ms)"),
        (
            424,
            {"ms-azureml-model-error-statuscode": "500", "ms-azureml-model-error-reason": "run failed"},
            "500 (run failed)",
        ),
        (429, {}, "max_concurrent_requests_per_instance (2)"),
    ],
)
def test_azures_own_scoring_errors_say_what_to_change(azure, project, status, headers, says):
    run_push(project, azure)
    azure.front.answers["blue"] = lambda body: (status, headers, b'{"message": "no"}')

    with pytest.raises(BackendError) as caught:
        backend_for(project, azure).invoke(b"{}", slot="blue")

    assert f"HTTP {status}" in caught.value.message and says in caught.value.message
    assert caught.value.hint


def test_a_key_regenerated_after_it_was_read_is_refused_by_the_data_plane(azure, project):
    run_push(project, azure)
    # listKeys answers the keys of a moment ago; the endpoint's keys have been regenerated since
    azure.workspace.script(
        "POST",
        rf"/onlineEndpoints/{NAME}/listKeys",
        Reply(200, {"primaryKey": "stale", "secondaryKey": "stale"}),
    )

    with pytest.raises(BackendError, match="HTTP 401"):
        backend_for(project, azure).invoke(b"{}")


def test_a_saturated_deployment_fails_the_latency_run_saying_what_to_change(azure, project):
    edit(
        project,
        target={"request_settings": {"max_concurrent_requests_per_instance": 1}},
        smoke_test={
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 24, "concurrency": 6, "warmup": 0},
        },
    )
    azure.front.answer_delay_s = 0.05

    error = push_fails(project, azure)

    assert isinstance(error, LatencyObjectiveMissed)
    samples = error.details["smoke"]["latency"]["error_samples"]
    assert any("HTTP 429" in s and "= 2 requests at a time" in s for s in samples), samples
    assert (NAME, "blue") not in azure.workspace.deployments


def test_a_mirrored_deployment_is_deleted_once_it_has_no_share(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [5]}')
    edit(project, rollout={"traffic": 0, "mirror": 10})
    run_push(project, azure)
    backend = backend_for(project, azure)

    with pytest.raises(UsageError, match="10% mirrored"):
        backend.delete("green")
    backend.set_traffic({"blue": 100}, {})
    backend.delete("green")

    assert {d for (_, d) in azure.workspace.deployments} == {"blue"}
    assert writes(azure)[-1] == f"DELETE /onlineEndpoints/{NAME}/deployments/green"


# -- waiting, in this command or a later one -------------------------------------------------
def test_a_later_command_waits_for_a_deployment_by_reading_its_state(azure, project):
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    azure.workspace.polls = 6
    pushing = backend_for(project, azure)
    pushing.deploy_slot("blue", build_package(pushing.manifest, paths.package_store()))
    assert azure.workspace.deployments[(NAME, "blue")]["properties"]["provisioningState"] == "Creating"

    later = backend_for(project, azure)  # knows no operation: reads the state until it ends
    assert later.wait_healthy("blue").state == "healthy"


def test_push_waits_for_an_endpoint_another_command_is_still_creating(azure, project):
    azure.workspace.create_endpoint_elsewhere(NAME, polls=6)
    events: list = []

    run_push(project, azure, events)

    assert any("is Creating; waiting for it" in e.message for e in events)
    assert writes(azure).count(f"PUT /onlineEndpoints/{NAME}") == 1  # only the traffic: not created twice


def test_health_progress_is_reported_while_waiting(azure, project):
    azure.workspace.polls = 6
    events: list = []

    run_push(project, azure, events)

    health = [e for e in events if e.step == "health"]
    # each operation has the whole target.timeout (30 s)
    assert any("waiting for blue" in e.message and e.timeout == 30 for e in health)
    assert health[-1].message == "blue is healthy"


def test_set_traffic_validates_first_and_names_every_deployment(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [6]}')
    edit(project, rollout={"traffic": 0})
    run_push(project, azure)
    backend = backend_for(project, azure)
    before = len(writes(azure))

    with pytest.raises(UsageError, match="adds up to 90%"):
        backend.set_traffic({"blue": 50, "green": 40})
    with pytest.raises(UsageError, match="no deployment named red"):
        backend.set_traffic({"red": 100})
    assert writes(azure)[before:] == []  # refused before Azure was asked

    backend.set_traffic({"green": 100})  # blue is not named: it gets 0, said explicitly
    endpoint_puts = [
        s for s in azure.workspace.sent if s.method == "PUT" and s.path.endswith(f"/onlineEndpoints/{NAME}")
    ]
    # on the wire azure-ai-ml leaves out the zero shares: the PUT replaces the whole map
    assert endpoint_puts[-1].json()["properties"]["traffic"] == {"green": 100}
    assert live(azure)[0] == {"green": 100}
