"""Staged rollouts on SQL Server: the live metrics are the request log table the generated
procedures write, read through the backend (tests/fakes/sqlserver_fake.py's server runs the
generated routing for real); the rows one slot scored in one call count as one request."""

from __future__ import annotations

import json
import threading

from tdsp_deploy.rollout.machine import Walker
from tdsp_deploy.rollout.sources import RequestLogSource
from tdsp_deploy.rollout.state import RolloutState, RolloutStore
from tests.fakes.sqlserver_project import FEATURES, backend_for
from tests.fakes.sqlserver_traffic import driver, random_rows, server, two_versions, weights  # noqa: F401


def test_a_rollout_walks_on_the_request_log_and_counts_calls_not_rows(server, driver, cli, tmp_path):  # noqa: F811
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=100").exit_code == 0
    body = json.dumps({"columns": FEATURES, "data": random_rows(50)}).encode()
    caller = backend_for(first, server)  # a client of its own, as another application would be
    stop = threading.Event()
    calls: list[int] = []

    def load() -> None:
        while not stop.is_set():
            calls.append(caller.invoke(body).status)

    state = RolloutState(
        endpoint="iris",
        kind="sqlserver",
        deployment="green",
        control="blue",
        steps=[{"traffic": 40, "bake": 0.5}, {"traffic": 100, "bake": None}],
        guardrails={
            "alpha": 0.05,
            "check_every": 0.3,
            "min_requests": 3,
            "max_bake": 60,
            "max_error_rate": 0.05,
        },
        before={"traffic": {"blue": 100, "green": 0}, "mirror": {}},
    )
    backend = backend_for(first, server)
    source = RequestLogSource(backend)
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        walked = Walker(backend, RolloutStore("sqlserver", "iris", home=tmp_path), source).run(state)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert walked.status == "promoted"
    assert weights(server) == {"blue": 0, "green": 100}
    passed = walked.steps_passed[0]
    # each call at 40% puts rows on both slots: one request each, never 50 (its rows)
    assert 3 <= passed["new"]["requests"] <= len(calls) and passed["new"]["errors"] == 0
    assert passed["control"]["requests"] <= len(calls)
    assert all(status == 200 for status in calls)
