"""The rollout's state machine on its own, fast: a scripted metric source and clock, a backend
that enforces the traffic rules, the state on disk. Paths the live tests do not reach cheaply:
too little evidence (exit 8, split left), pause then resume, a breach at step 2 (back to the
split before the rollout), promote and abort by request, the counters' parsing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tdsp_deploy.ab import sequential
from tdsp_deploy.backends.base import EndpointStatus, SlotStatus
from tdsp_deploy.errors import ExitCode
from tdsp_deploy.rollout.machine import NotEnoughEvidence, RolledBack, Walker
from tdsp_deploy.rollout.sources import ArmWindow, parse_counters
from tdsp_deploy.rollout.state import RolloutState, RolloutStore


class Backend:
    kind = "test"

    def __init__(self) -> None:
        self.traffic = {"blue": 100, "green": 0}
        self.changes: list[dict[str, int]] = []

    def status(self) -> EndpointStatus:
        slots = [SlotStatus(name, "healthy", traffic=share) for name, share in self.traffic.items()]
        return EndpointStatus("iris", "test", True, slots=slots)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        assert sum(traffic.values()) == 100 and set(traffic) <= set(self.traffic)
        self.traffic = {name: traffic.get(name, 0) for name in self.traffic}
        self.changes.append(dict(traffic))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Source:
    """Each look adds ``per_look`` requests to the new deployment (5% of them errors when
    ``failing``) and 19 times as many to the control."""

    def __init__(self, per_look: int, failing_from_step: int | None = None):
        self.per_look = per_look
        self.failing_from_step = failing_from_step
        self.looks = 0
        self.state: RolloutState | None = None

    def begin(self) -> dict[str, Any]:
        self.looks = 0
        return {}

    def read(self, cursor: dict[str, Any]) -> dict[str, ArmWindow]:
        self.looks += 1
        n = self.per_look * self.looks
        failing = (
            self.failing_from_step is not None
            and self.state
            and self.state.step + 1 >= self.failing_from_step
        )
        latency = sequential.latency_counts(np.full(n, 5.0))
        return {
            "green": ArmWindow(requests=n, errors=n // 5 if failing else 0, latency=latency),
            "blue": ArmWindow(
                requests=19 * n, errors=0, latency=sequential.latency_counts(np.full(19 * n, 5.0))
            ),
        }


def new_state(**guardrails: Any) -> RolloutState:
    return RolloutState(
        endpoint="iris",
        kind="test",
        deployment="green",
        control="blue",
        steps=[{"traffic": 5, "bake": 10.0}, {"traffic": 50, "bake": 10.0}, {"traffic": 100, "bake": None}],
        guardrails={
            "alpha": 0.05,
            "check_every": 1.0,
            "min_requests": 50,
            "max_error_rate": 0.01,
            **guardrails,
        },
        before={"traffic": {"blue": 100, "green": 0}, "mirror": {}},
    )


def walker(tmp_path, source: Source, events: list | None = None) -> tuple[Walker, Backend, RolloutStore]:  # type: ignore[no-untyped-def]
    backend, clock = Backend(), Clock()
    store = RolloutStore("test", "iris", home=tmp_path)
    sink = events if events is not None else []
    return (
        Walker(backend, store, source, on_event=sink.append, clock=clock, sleep=clock.sleep),  # type: ignore[arg-type]
        backend,
        store,
    )


def test_a_healthy_rollout_passes_each_step_after_its_bake_and_min_requests(tmp_path) -> None:
    events: list[dict] = []
    source = Source(per_look=10)
    run, backend, store = walker(tmp_path, source, events)
    state = run.run(new_state())
    assert state.status == "promoted"
    assert backend.changes == [{"green": 5, "blue": 95}, {"green": 50, "blue": 50}, {"green": 100}]
    # a step passes once both hold: 10 s of bake (10 looks) and 50 requests (5 looks)
    assert [p["elapsed"] for p in state.steps_passed] == [10.0, 10.0]
    assert store.read().status == "promoted"
    assert all(e["new"]["errors"] == 0 for e in events if e["event"] == "check")


def test_too_little_evidence_stops_with_exit_8_and_leaves_the_split(tmp_path) -> None:
    run, backend, store = walker(tmp_path, Source(per_look=1))
    with pytest.raises(NotEnoughEvidence) as stopped:
        run.run(new_state(max_bake=30.0))
    assert stopped.value.exit_code == ExitCode.AB_INCONCLUSIVE
    assert "saw 30 requests" in stopped.value.message and "needs 50" in stopped.value.message
    assert backend.traffic == {"blue": 95, "green": 5}  # left where it was
    assert store.read().status == "stopped"


def test_a_breach_at_step_2_returns_to_the_split_before_the_rollout(tmp_path) -> None:
    source = Source(per_look=40, failing_from_step=2)
    run, backend, store = walker(tmp_path, source)
    state = new_state()
    source.state = state
    with pytest.raises(RolledBack) as rolled:
        run.run(state)
    assert rolled.value.exit_code == ExitCode.ROLLED_BACK
    assert rolled.value.details["step"] == 2 and rolled.value.details["guardrail"]["name"] == "max_error_rate"
    assert "against a limit of 1.00%" in rolled.value.message
    assert backend.traffic == {"blue": 100, "green": 0}
    saved = store.read()
    assert saved.status == "rolled_back" and saved.decision["guardrail"]["breached"]


def test_pause_keeps_the_split_and_resume_continues_from_the_step(tmp_path) -> None:
    source = Source(per_look=10)
    run, backend, store = walker(tmp_path, source)
    state = new_state()
    store.write(state)
    store.ask("pause")
    paused = run.run(state)
    assert paused.status == "paused" and backend.traffic == {"blue": 95, "green": 5}
    resumed = run.run(store.read())
    assert resumed.status == "promoted" and backend.traffic == {"blue": 0, "green": 100}


@pytest.mark.parametrize(
    ("request_", "traffic"), [("abort", {"blue": 100, "green": 0}), ("promote", {"blue": 0, "green": 100})]
)
def test_abort_and_promote_by_request(tmp_path, request_: str, traffic: dict) -> None:
    run, backend, store = walker(tmp_path, Source(per_look=10))
    state = new_state()
    store.write(state)
    store.ask(request_)
    ended = run.run(state)
    assert ended.status == ("aborted" if request_ == "abort" else "promoted")
    assert backend.traffic == traffic
    with pytest.raises(Exception, match="no rollout in progress"):
        store.ask("pause")


def test_the_router_counters_are_read_per_deployment() -> None:
    text = "\n".join(
        [
            "# TYPE tdsp_requests_total counter",
            'tdsp_requests_total{endpoint="iris",deployment="blue",code="200"} 90',
            'tdsp_requests_total{endpoint="iris",deployment="blue",code="500"} 3',
            'tdsp_requests_total{endpoint="iris",deployment="green",code="200"} 7',
            'tdsp_request_errors_total{endpoint="iris",deployment="blue"} 3',
            'tdsp_request_errors_total{endpoint="iris",deployment="green"} 0',
            'tdsp_request_duration_seconds_count{endpoint="iris",deployment="blue"} 93',
        ]
    )
    assert parse_counters(text) == {
        "blue": {"requests": 93, "errors": 3},
        "green": {"requests": 7, "errors": 0},
    }
