"""Staged rollouts on the Azure ML target: the metrics come from Azure Monitor through
Microsoft's client library (azure-monitor-query's MetricsQueryClient) talking to a fake
transport that answers as the metrics API's recorded traffic does (tests/fakes/azure_monitor_fake.py),
and the traffic moves through the backend's own calls, the real azure-ai-ml MLClient, against
the ARM emulator (tests/fakes/arm/). One test per guardrail: a deployment that breaches it is rolled
back to the control; a healthy one is promoted."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
import yaml
from azure.monitor.query import MetricsQueryClient

import tests.fakes.azureml_emulated as shared
from tdsp_deploy.backends.azureml.monitor import EndpointMetrics, endpoint_resource_id
from tdsp_deploy.errors import BackendError, ExitCode
from tdsp_deploy.rollout.machine import RolledBack, Walker
from tdsp_deploy.rollout.sources import AzureMonitorSource
from tdsp_deploy.rollout.state import RolloutState, RolloutStore
from tests.fakes.arm import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, EmulatedAzure
from tests.fakes.azure_monitor_fake import FakeCredential, FakeMonitor, Minute
from tests.fakes.azureml_emulated import backend_for, live, run_push
from tests.fakes.azureml_project import NAME, edit, new_model

START = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC).timestamp()
HEALTHY = Minute(ok=950, errors=2, p50=20, p90=30, p95=35, p99=50)

# the emulator's fixtures, shared with test_azureml_arm.py (Azurite once per module)
pytestmark = shared.pytestmark
storage = shared.storage
azure = shared.azure
project = shared.project


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def monitor(green: Minute, azure: EmulatedAzure | None = None) -> FakeMonitor:
    """blue (the control) healthy; green as given. With ``azure``, Azure Monitor knows only
    the emulated workspace's endpoints."""
    return FakeMonitor(
        lambda deployment, minute: green if deployment == "green" else HEALTHY,
        ["blue", "green"],
        exists=(lambda name: name in azure.workspace.endpoints) if azure is not None else None,
    )


def traffic_writes(azure: EmulatedAzure) -> list[dict[str, int]]:
    """The live split of every endpoint PUT the SDK sent, in order."""
    path = f"{azure.workspace.base}/onlineEndpoints/{NAME}"
    return [
        {k: v for k, v in sent.json()["properties"]["traffic"].items() if v}
        for sent in azure.workspace.sent
        if sent.method == "PUT" and sent.path == path
    ]


def walk(  # type: ignore[no-untyped-def]
    tmp_path, backend, transport: FakeMonitor, guardrails: dict[str, Any], store: RolloutStore | None = None
) -> tuple[RolloutState, Any]:
    clock = Clock()
    metrics = EndpointMetrics(
        MetricsQueryClient(FakeCredential(), transport=transport),
        endpoint_resource_id(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, NAME),
    )
    state = RolloutState(
        endpoint=NAME,
        kind="azureml",
        deployment="green",
        control="blue",
        steps=[{"traffic": 10, "bake": 600.0}, {"traffic": 100, "bake": None}],
        guardrails={"alpha": 0.05, "check_every": 60.0, "min_requests": 500, "max_bake": 1800, **guardrails},
        before={"traffic": {"blue": 100, "green": 0}, "mirror": {}},
    )
    walker = Walker(
        backend,
        store or RolloutStore("azureml", NAME, home=tmp_path),
        AzureMonitorSource(metrics, clock=clock),
        clock=clock,
        sleep=clock.sleep,
    )
    try:
        return walker.run(state), None
    except RolledBack as rolled:
        return state, rolled


@pytest.fixture
def staged(azure, project):  # type: ignore[no-untyped-def]
    """blue takes all the traffic; green is deployed beside it with none (both through the
    real MLClient against the emulated workspace)."""
    run_push(project, azure)
    new_model(project, '{"w": [4, 5, 6]}')
    edit(project, rollout={"traffic": 0})
    assert run_push(project, azure).deployment == "green"
    assert live(azure)[0] == {"blue": 100}
    return backend_for(project, azure)


def test_the_metrics_are_read_per_deployment_through_the_client_library() -> None:
    transport = monitor(Minute(ok=95, errors=5, p95=80, p99=120))
    metrics = EndpointMetrics(
        MetricsQueryClient(FakeCredential(), transport=transport),
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/onlineEndpoints/iris",
    )
    end = dt.datetime.fromtimestamp(START, tz=dt.UTC)
    found = metrics.read(end - dt.timedelta(minutes=5), end)
    assert (found["green"].requests, found["green"].errors) == (500, 25)
    assert found["green"].quantiles["p95"] == [80] * 5 and found["blue"].quantiles["p99"] == [50] * 5
    counts, latency = transport.queries
    assert counts["metricnames"] == "RequestsPerMinute" and counts["aggregation"] == "Total"
    assert (
        counts["$filter"] == "deployment eq '*' and statusCodeClass eq '*'" and counts["interval"] == "PT1M"
    )
    assert (
        latency["metricnames"]
        == "RequestLatency_P50,RequestLatency_P90,RequestLatency_P95,RequestLatency_P99"
    )


def test_azure_monitor_saying_no_is_a_backend_error() -> None:
    metrics = EndpointMetrics(
        MetricsQueryClient(FakeCredential(), transport=monitor(HEALTHY)),
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/onlineEndpoints/iris",
    )
    end = dt.datetime.fromtimestamp(START, tz=dt.UTC)
    with pytest.raises(BackendError) as refused:
        metrics._query(
            ["RequestLatency_P95"], "Total", "deployment eq '*'", end - dt.timedelta(minutes=2), end
        )
    assert (
        refused.value.exit_code == ExitCode.BACKEND
        and "Aggregation Total is not supported" in refused.value.message
    )


def test_an_endpoint_azure_monitor_does_not_know_is_a_backend_error(azure) -> None:
    metrics = EndpointMetrics(
        MetricsQueryClient(FakeCredential(), transport=monitor(HEALTHY, azure)),
        endpoint_resource_id(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, "nosuch"),
    )
    end = dt.datetime.fromtimestamp(START, tz=dt.UTC)
    with pytest.raises(BackendError) as refused:
        metrics.read(end - dt.timedelta(minutes=2), end)
    assert "(404)" in refused.value.message and "nosuch" in refused.value.message


def test_a_healthy_deployment_is_promoted(tmp_path, azure, staged) -> None:
    guardrails = {
        "max_error_rate": 0.01,
        "max_error_rate_increase": 0.005,
        "max_p95_ms": 100,
        "max_p95_increase_ms": 10,
    }
    before = len(traffic_writes(azure))
    state, rolled = walk(tmp_path, staged, monitor(HEALTHY, azure), guardrails)
    assert rolled is None and state.status == "promoted"
    assert live(azure)[0] == {"green": 100}
    # each step was one endpoint update through the SDK, in order
    assert traffic_writes(azure)[before:] == [{"green": 10, "blue": 90}, {"green": 100}]
    assert [s["traffic"] for s in state.steps_passed] == [10]


@pytest.mark.parametrize(
    ("guardrail", "limit", "green"),
    [
        ("max_error_rate", 0.01, Minute(ok=930, errors=20)),
        ("max_error_rate_increase", 0.005, Minute(ok=930, errors=20)),
        ("max_p95_ms", 60, Minute(ok=950, p95=80, p99=90)),
        ("max_p99_ms", 60, Minute(ok=950, p99=90)),
        ("max_p95_increase_ms", 10, Minute(ok=950, p95=55, p99=70)),
        ("max_p99_increase_ms", 10, Minute(ok=950, p99=75)),
    ],
)
def test_each_guardrail_rolls_back_to_the_control(
    tmp_path,
    azure,
    staged,
    guardrail: str,
    limit: float,
    green: Minute,
) -> None:
    before = len(traffic_writes(azure))
    state, rolled = walk(tmp_path, staged, monitor(green, azure), {guardrail: limit})
    assert rolled is not None and rolled.exit_code == ExitCode.ROLLED_BACK
    assert rolled.details["guardrail"]["name"] == guardrail and rolled.details["step"] == 1
    assert state.status == "rolled_back"
    assert live(azure)[0] == {"blue": 100}
    assert traffic_writes(azure)[before:] == [{"green": 10, "blue": 90}, {"blue": 100}]


# -- the rollout in the endpoint's tags ------------------------------------------------------
def tags_sent(azure: EmulatedAzure) -> list[dict[str, str]]:
    path = f"{azure.workspace.base}/onlineEndpoints/{NAME}"
    return [
        sent.json().get("tags") or {}
        for sent in azure.workspace.sent
        if sent.method == "PUT" and sent.path == path
    ]


def emulated_cli(monkeypatch: pytest.MonkeyPatch, azure: EmulatedAzure) -> None:
    """The CLI's own backend, signed in to the emulated workspace: the real MLClient over the
    emulator's transport is the only difference."""
    from tdsp_deploy.backends.azureml.client import AzureMLClient
    from tests.fakes.arm import StaticToken

    connect = AzureMLClient.connect.__func__

    def emulated(cls, target, **options):  # type: ignore[no-untyped-def]
        return connect(
            cls,
            target,
            credential=StaticToken(),
            transport=azure.workspace.transport,
            polling_interval=0.02,
            retry_backoff_factor=0.01,
            poll_interval=0.02,
        )

    monkeypatch.setattr(AzureMLClient, "connect", classmethod(emulated))


def test_the_rollout_is_kept_in_the_endpoints_tags_and_read_back_on_another_machine(
    tmp_path, azure, staged, project, cli, monkeypatch
) -> None:
    from tdsp_deploy.rollout import store_for
    from tdsp_deploy.rollout.tags import TAG, TaggedStore, decode

    store = store_for(staged)
    assert isinstance(store, TaggedStore)
    before = len(tags_sent(azure))
    state, rolled = walk(tmp_path, staged, monitor(HEALTHY, azure), {"max_error_rate": 0.01}, store)
    assert rolled is None and state.status == "promoted"

    # a tag write is an endpoint update only when the step or the status changed
    written = [t[TAG] for t in tags_sent(azure)[before:] if TAG in t]
    changes = [written[0], *(b for a, b in zip(written, written[1:], strict=False) if a != b)]
    seen = [(d.step, d.status) for d in (decode(t, "azureml", NAME) for t in changes)]
    assert seen == [(0, "running"), (1, "running"), (1, "promoted")]
    # Azure keeps the tags the endpoint had (the traffic updates send them back whole)
    kept = azure.workspace.endpoints[NAME]["tags"]
    assert decode(kept[TAG], "azureml", NAME).status == "promoted"
    assert {k: v for k, v in kept.items() if k != TAG} == {
        k: v for k, v in tags_sent(azure)[before - 1].items() if k != TAG
    }

    # a second machine: its own home, no rollout file; `rollout status` reads the endpoint
    emulated_cli(monkeypatch, azure)
    monkeypatch.setenv("TDSP_DEPLOY_HOME", str(tmp_path / "second-machine"))
    shown = cli("rollout", "status", project, "--json")
    assert shown.exit_code == 0, shown.stderr
    summary = shown.json()
    assert (summary["status"], summary["deployment"], summary["control"]) == ("promoted", "green", "blue")
    assert [s["traffic"] for s in summary["steps"]] == [10, 100]
    assert summary["decision"]["origin"] == TAG
    text = cli("rollout", "status", project)
    assert text.exit_code == 0 and "status: promoted" in text.stderr


def test_a_rollout_in_progress_shows_its_step_on_another_machine(
    tmp_path, azure, staged, project, cli, monkeypatch
) -> None:
    from tdsp_deploy.rollout import store_for
    from tdsp_deploy.rollout.tags import TAG

    state = RolloutState(
        endpoint=NAME,
        kind="azureml",
        deployment="green",
        control="blue",
        steps=[
            {"traffic": 10, "bake": 600.0},
            {"traffic": 50, "bake": 600.0},
            {"traffic": 100, "bake": None},
        ],
        guardrails={},
        before={"traffic": {"blue": 100}, "mirror": {}},
        step=1,
    )
    store_for(staged).write(state)
    assert TAG in azure.workspace.endpoints[NAME]["tags"]
    emulated_cli(monkeypatch, azure)
    monkeypatch.setenv("TDSP_DEPLOY_HOME", str(tmp_path / "second-machine"))
    shown = cli("rollout", "status", project)
    assert shown.exit_code == 0, shown.stderr
    assert "status: running, step 2 of 3" in shown.stderr and "green=50%" in shown.stderr
    assert "rollout resume" not in shown.stderr  # it is walked elsewhere: nothing to take over here
    # the other commands need the whole state, which stays with the machine walking it
    refused = cli("rollout", "abort", project)
    assert refused.exit_code == 2 and "no rollout" in refused.stderr


def test_a_refused_tag_update_does_not_stop_the_rollout_and_is_tried_again(
    tmp_path, azure, staged, project
) -> None:
    from tdsp_deploy.rollout.tags import TAG, TaggedStore, decode
    from tests.fakes.arm.assets import arm_error
    from tests.fakes.arm.workspace import Scripted

    refused: list[dict] = []

    def once(sent):  # type: ignore[no-untyped-def]
        tags = sent.json().get("tags") or {}
        if TAG in tags and not refused:  # the first tag update: someone else is changing it
            refused.append(tags)
            return arm_error(409, "UserError", "Conflict: an operation is already in progress.")
        return azure.workspace._route(sent)

    azure.workspace.scripted.append(Scripted("PUT", rf"/onlineEndpoints/{NAME}", once, times=10_000))
    events: list = []
    backend = backend_for(project, azure, events)
    store = TaggedStore(backend, home=tmp_path)
    state, rolled = walk(
        tmp_path, backend, monitor(Minute(ok=930, errors=20), azure), {"max_error_rate": 0.01}, store
    )
    assert rolled is not None and state.status == "rolled_back"
    assert live(azure)[0] == {"blue": 100}
    assert len(refused) == 1 and store.tag_error is None
    assert any(f"{TAG} tag was not updated" in e.message for e in events)
    assert decode(azure.workspace.endpoints[NAME]["tags"][TAG], "azureml", NAME).status == "rolled_back"


def test_an_unreadable_tag_is_a_clear_error(tmp_path, azure, staged, project, cli, monkeypatch) -> None:
    from tdsp_deploy.rollout.tags import TAG

    staged.write_endpoint_tags({TAG: "{not json"})
    emulated_cli(monkeypatch, azure)
    monkeypatch.setenv("TDSP_DEPLOY_HOME", str(tmp_path / "second-machine"))
    shown = cli("rollout", "status", project)
    assert shown.exit_code == ExitCode.BACKEND and f"{TAG} tag is unreadable" in shown.stderr
    assert "Traceback" not in shown.stderr


# -- push, end to end ------------------------------------------------------------------------
class Accelerated:
    """Azure Monitor's clock for a push that bakes for seconds: a real second is a minute, so
    each look of the walker finds a whole minute more in Azure Monitor."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return START + (time.monotonic() - self.t0) * 60


def staged_manifest(project, guardrails: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(project.read_text())
    doc["rollout"] = {
        "steps": [{"traffic": 10, "bake": "2s"}, {"traffic": 100}],
        "guardrails": {"check_every": "1s", "min_requests": 500, **guardrails},
    }
    project.write_text(yaml.safe_dump(doc))


def azure_monitor(monkeypatch: pytest.MonkeyPatch, azure: EmulatedAzure, green: Minute) -> FakeMonitor:
    """The push's metric source: the real MetricsQueryClient over the Azure Monitor fake, for
    the endpoint the backend names, on the accelerated clock."""
    from tdsp_deploy.rollout import sources

    transport = monitor(green, azure)

    def source(backend):  # type: ignore[no-untyped-def]
        assert backend.kind == "azureml"
        metrics = EndpointMetrics(
            MetricsQueryClient(FakeCredential(), transport=transport),
            endpoint_resource_id(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, backend.manifest.name),
        )
        return AzureMonitorSource(metrics, clock=Accelerated())

    monkeypatch.setattr(sources, "metric_source", source)
    return transport


def splits(azure: EmulatedAzure, since: int) -> list[dict[str, int]]:
    """The distinct live splits the endpoint PUTs carried since ``since`` (a tag update
    sends the split unchanged)."""
    found: list[dict[str, int]] = []
    for split in traffic_writes(azure)[since:]:
        if not found or found[-1] != split:
            found.append(split)
    return found


def test_push_walks_the_steps_through_azure_and_promotes(azure, project, monkeypatch) -> None:
    from tdsp_deploy.rollout.tags import TAG, decode

    run_push(project, azure)
    new_model(project, '{"w": [4, 5, 6]}')
    staged_manifest(project, {"max_error_rate": 0.01, "max_p95_increase_ms": 10})
    transport = azure_monitor(monkeypatch, azure, HEALTHY)
    before = len(traffic_writes(azure))
    events: list = []
    result = run_push(project, azure, on_rollout_event=events.append)
    assert result.deployment == "green" and result.rollout is not None
    assert result.rollout["status"] == "promoted"
    assert live(azure)[0] == {"green": 100}
    assert splits(azure, before) == [{"blue": 100}, {"green": 10, "blue": 90}, {"green": 100}]
    passed = [e for e in events if e["event"] == "passed"]
    assert len(passed) == 1 and passed[0]["new"]["requests"] >= 500
    assert {q["metricnames"].split(",")[0] for q in transport.queries} == {
        "RequestsPerMinute",
        "RequestLatency_P50",
    }
    assert decode(azure.workspace.endpoints[NAME]["tags"][TAG], "azureml", NAME).status == "promoted"


def test_push_rolls_back_a_failing_deployment_with_exit_9(azure, project, monkeypatch) -> None:
    from tdsp_deploy.rollout.tags import TAG, decode

    run_push(project, azure)
    new_model(project, '{"w": [4, 5, 6]}')
    staged_manifest(project, {"max_error_rate": 0.01})
    azure_monitor(monkeypatch, azure, Minute(ok=930, errors=20))
    before = len(traffic_writes(azure))
    with pytest.raises(RolledBack) as rolled:
        run_push(project, azure)
    assert rolled.value.exit_code == ExitCode.ROLLED_BACK == 9
    assert rolled.value.details["guardrail"]["name"] == "max_error_rate"
    assert "max_error_rate breached at step 1 (10%)" in rolled.value.message
    assert live(azure)[0] == {"blue": 100}
    assert splits(azure, before) == [{"blue": 100}, {"green": 10, "blue": 90}, {"blue": 100}]
    assert decode(azure.workspace.endpoints[NAME]["tags"][TAG], "azureml", NAME).status == "rolled_back"
