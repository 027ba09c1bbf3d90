"""How the azureml backend fails, through the real azure-ai-ml ``MLClient`` against the ARM
emulator (tests/fakes/arm/): Azure's error bodies and operation outcomes, as recorded or as Azure's
documentation shows them, reach the user translated, with the exit code the README lists and
a hint, and a push that fails after the deployment exists rolls back as far as Azure allows."""

from __future__ import annotations

import json

import pytest

import tests.fakes.azureml_emulated as shared
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout, EndpointNotFound, ExitCode
from tdsp_deploy.pipeline import change_traffic
from tdsp_deploy.traffic import TrafficSplit
from tests.fakes.arm import emulated_azure
from tests.fakes.arm.transport import Reply
from tests.fakes.arm.workspace import arm_error
from tests.fakes.azureml_emulated import backend_for, live, push_fails, run_push, writes
from tests.fakes.azureml_project import EXPECTED, NAME, edit, new_model

DEPLOYMENT_PUT = rf"/onlineEndpoints/{NAME}/deployments/blue"

pytestmark = shared.pytestmark  # skipped without Azurite

# the emulator's fixtures, shared with test_azureml_arm.py (Azurite once per module)
storage = shared.storage
azure = shared.azure
project = shared.project


def deletes_of(azure, slot: str) -> list[str]:
    return [w for w in writes(azure) if w == f"DELETE /onlineEndpoints/{NAME}/deployments/{slot}"]


def test_failed_provisioning_shows_azures_error_and_the_container_log_and_removes_the_deployment(
    azure, project
):
    # the operation's error as Azure's troubleshooting guide shows it for a crashing container
    azure.workspace.next_deployment_outcome = (
        "Failed",
        {
            "code": "ResourceNotReady",
            "message": "User container has crashed or terminated: Liveness probe failed: HTTP probe failed "
            "with statuscode: 502. Please see troubleshooting guide, available here: "
            "https://aka.ms/oe-tsg#error-resourcenotready",
        },
    )
    azure.workspace.logs[(NAME, "blue", "InferenceServer")] = (
        "Traceback (most recent call last):\nModuleNotFoundError: No module named 'sklearn'"
    )

    error = push_fails(project, azure)

    assert isinstance(error, DeploymentFailed) and error.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "Liveness probe failed" in error.message and "init()" in (error.hint or "")
    tail = error.details["log_tail"]
    assert "--- inference-server ---" in tail and "No module named 'sklearn'" in tail
    assert "--- storage-initializer ---" in tail
    assert (NAME, "blue") not in azure.workspace.deployments  # the failed new deployment is gone
    assert error.details["rolled_back"] is True


def test_quota_refusal_keeps_the_quota_text_from_the_details(azure, project):
    # Azure ML's refusal of a deployment over quota: the top-level error says only that the
    # request is invalid; what is wrong is in details[0]
    azure.workspace.script(
        "PUT",
        DEPLOYMENT_PUT,
        arm_error(
            400,
            "BadRequest",
            "The request is invalid.",
            details=[
                {
                    "code": "Invalid",
                    "message": "Not enough quota available for Standard_DS3_v2 in SubscriptionId "
                    "00000000-0000-0000-0000-000000000000. Current usage/limit: 4/6. Additional needed: 8 "
                    "Please see troubleshooting guide, available here: https://aka.ms/oe-tsg#error-outofquota",
                }
            ],
        ),
    )

    error = push_fails(project, azure)

    assert isinstance(error, DeploymentFailed) and error.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "Not enough quota available for Standard_DS3_v2" in error.message
    assert "1 x Standard_DS3_v2" in (error.hint or "") and "instance_count" in (error.hint or "")
    assert (NAME, "blue") not in azure.workspace.deployments


def test_a_missing_model_version_is_not_reported_as_a_missing_endpoint(azure, project):
    first = run_push(project, azure)
    edit(project, rollout={"deployment": "green", "traffic": 0})
    # the model version is found registered, then deleted (by someone else) before the deployment
    key = ("iris-classifier", first.model_version)
    registered = azure.workspace.models.pop(key)
    azure.workspace.script(
        "GET", rf"/models/iris-classifier/versions/{first.model_version}", lambda sent: Reply(200, registered)
    )

    error = push_fails(project, azure)

    assert not isinstance(error, EndpointNotFound)
    assert "model" in error.message and first.model_version in error.message
    assert "deploy it with" not in (error.hint or "")
    assert "tdsp-deploy push" in (error.hint or "")  # registering it again is what a push does


def test_a_missing_deployment_is_named_as_such(azure, project):
    run_push(project, azure)
    client = backend_for(project, azure).client

    with pytest.raises(EndpointNotFound) as caught:
        client.get_deployment(NAME, "green")

    assert "deployment 'green'" in caught.value.message
    assert "endpoint" not in caught.value.message.split("deployment 'green'")[0]


def test_throttling_beyond_azure_cores_retries_says_to_retry_later(azure, project):
    # ARM's throttling answer: 429 with Retry-After; azure-core retries it three times
    azure.workspace.script(
        "PUT",
        DEPLOYMENT_PUT,
        arm_error(429, "TooManyRequests", "The request is being throttled.", headers={"Retry-After": "1"}),
        times=4,
    )

    error = push_fails(project, azure)

    assert isinstance(error, BackendError) and error.exit_code == ExitCode.BACKEND
    assert "throttl" in error.message.lower()
    assert "later" in (error.hint or "")
    assert sum(1 for w in writes(azure) if w == f"PUT {DEPLOYMENT_PUT}") == 4


def test_an_endpoint_in_failed_state_is_not_deployed_into(azure, project):
    run_push(project, azure)
    azure.workspace.endpoints[NAME]["properties"]["provisioningState"] = "Failed"
    new_model(project, '{"w": [9]}')
    before = len(writes(azure))

    error = push_fails(project, azure)

    assert isinstance(error, BackendError) and error.exit_code == ExitCode.BACKEND
    assert "Failed" in error.message and "delete" in (error.hint or "")
    assert writes(azure)[before:] == []  # nothing was sent to it


def test_an_endpoint_being_deleted_is_waited_for_then_created_again(azure, project):
    run_push(project, azure)
    azure.workspace.begin_elsewhere("endpoint", NAME, None, "delete", polls=6)
    new_model(project, '{"w": [10]}')
    events: list = []

    result = run_push(project, azure, events)

    assert any("being deleted; waiting" in e.message for e in events)
    assert result.traffic == {"green": 100} or result.traffic == {"blue": 100}
    assert azure.workspace.endpoints[NAME]["properties"]["provisioningState"] == "Succeeded"
    assert writes(azure).count(f"PUT /onlineEndpoints/{NAME}") == 4  # created, traffic; again both


def test_each_operation_has_the_whole_timeout(storage, project):
    edit(project, target={"timeout": 2})
    with emulated_azure(storage, json.dumps(EXPECTED).encode(), duration_s=1.2) as slow:
        result = run_push(project, slow)  # three operations of 1.2 s each, each within 2 s
        assert result.traffic == {"blue": 100}
        assert slow.workspace.unknown == []


def test_a_timeout_does_not_delete_a_deployment_azure_is_still_creating(azure, project):
    edit(project, target={"timeout": 1})
    azure.workspace.next_deployment_outcome = ("Never", None)

    error = push_fails(project, azure)

    assert isinstance(error, DeploymentTimeout) and error.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "was not ready after 1 s" in error.message and "target.timeout" in (error.hint or "")
    assert error.details["still_provisioning"] == ["deployment blue: Creating"]
    assert deletes_of(azure, "blue") == []  # Azure refuses it (409) while the operation runs
    assert error.details["rolled_back"] is False
    assert "still Creating" in error.details["rollback_error"]
    assert "delete" in error.details["rollback_error"]


def test_a_concurrent_update_is_refused_with_a_hint(azure, project):
    run_push(project, azure)
    new_model(project, '{"w": [11]}')
    edit(project, rollout={"traffic": 0})
    run_push(project, azure)
    backend = backend_for(project, azure)
    azure.workspace.begin_elsewhere("deployment", NAME, "green", "update", outcome="Never")

    with pytest.raises(BackendError) as caught:
        change_traffic(backend, backend.status(), TrafficSplit({"blue": 50, "green": 50}, {}), "traffic")

    assert caught.value.exit_code == ExitCode.BACKEND
    assert "in progress" in caught.value.message and "wait" in (caught.value.hint or "")
    assert live(azure)[0] == {"blue": 100}


def test_the_sdks_own_messages_stay_out_of_the_output(azure, project, capfd):
    run_push(project, azure)
    new_model(project, '{"w": [12]}')
    run_push(project, azure)

    out, err = capfd.readouterr()
    assert out == ""
    assert "Check: endpoint" not in err
    assert "experimental" not in err
    assert "\x1b[" not in err
