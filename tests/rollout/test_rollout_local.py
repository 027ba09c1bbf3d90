"""Staged rollouts on the real local target under steady client load: a good version walks
5 -> 25 -> 100 with no failed request; a version failing 3% of its requests at random is
rolled back at the first step (exit 9); a version 20 ms slower breaches a p95-increase
guardrail of 10 ms; a CLI killed with SIGKILL in step 2 leaves that split serving, and
`rollout resume` finishes the rollout while `rollout abort` returns to the control.

Bakes are seconds long and the checks half a second apart, so each test costs seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.errors import ExitCode
from tests.fakes.endpoint_client import Client

pytestmark = pytest.mark.timeout(420)

# Fails 3% of requests at random, once past its smoke test (the first 40 calls of a process).
FAILING_RUN = """
import random as _random

_real_run = run
_calls = 0


def run(raw_data):
    global _calls
    _calls += 1
    if _calls > 40 and _random.random() < 0.03:
        raise RuntimeError("the new model fails at random")
    return _real_run(raw_data)
"""

SLOWER_RUN = """
import time as _time

_real_run = run


def run(raw_data):
    _time.sleep(0.020)
    return _real_run(raw_data)
"""


class Load:
    """Steady client load: ``threads`` keep-alive callers posting the sample request until
    stopped; every answer is counted by status and by the deployment that gave it."""

    def __init__(self, uri: str, key: str, body: bytes, threads: int = 3):
        self.uri, self.key, self.body = uri, key, body
        self.answers: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self) -> None:
        client = Client(self.uri, self.key)
        while not self._stop.is_set():
            try:
                status, headers, _ = client.post(self.body)
                key = (headers.get("azureml-model-deployment", "?"), status)
            except Exception as exc:  # noqa: BLE001 - a failed request is what we count
                with self._lock:
                    self.failures.append(repr(exc))
                client = Client(self.uri, self.key)
                continue
            with self._lock:
                self.answers[key] += 1

    def failed(self, deployment: str | None = None) -> int:
        with self._lock:
            counted = sum(
                n
                for (d, s), n in self.answers.items()
                if s != 200 and (deployment is None or d == deployment)
            )
            return counted + (len(self.failures) if deployment is None else 0)

    def served(self, deployment: str) -> int:
        with self._lock:
            return sum(n for (d, _), n in self.answers.items() if d == deployment)


def first_version(cli, manifest: Path) -> tuple[dict, Load]:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(manifest.read_text())
    doc["smoke_test"]["latency"] = {"requests": 10, "concurrency": 1, "warmup": 0}
    manifest.write_text(yaml.safe_dump(doc))
    pushed = cli("push", manifest, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    key = cli("credentials", manifest, "--json").json()["primary_key"]
    body = (manifest.parent / "sample-request.json").read_bytes()
    return doc, Load(pushed.json()["scoring_uri"], key, body)


def second_version(
    manifest: Path, doc: dict, rollout: dict, script: str = "", version: str = "debug"
) -> None:
    doc["environment"]["variables"]["LOG_LEVEL"] = version  # a new version of the deployment
    doc["rollout"] = rollout
    manifest.write_text(yaml.safe_dump(doc))
    if script:
        score = manifest.parent / "src" / "score.py"
        score.write_text(score.read_text() + script)


def test_a_good_version_walks_5_25_100_without_a_failed_request(cli, iris, tmp_path):
    try:
        doc, load = first_version(cli, iris)
        second_version(
            iris,
            doc,
            {
                "steps": [{"traffic": 5, "bake": 2}, {"traffic": 25, "bake": 2}, {"traffic": 100}],
                "guardrails": {
                    "max_error_rate": 0.01,
                    "max_error_rate_increase": 0.01,
                    "max_p95_increase_ms": 200,
                    "min_requests": 20,
                    "check_every": 0.5,
                    "max_bake": 120,
                },
            },
        )
        with load:
            time.sleep(1)
            pushed = cli("push", iris, "--json-lines")
        assert pushed.exit_code == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
        events = [json.loads(line) for line in pushed.stdout.splitlines() if line.startswith("{")]
        traffic = [e["traffic"] for e in events if e["event"] == "traffic"]
        assert traffic == [{"green": 5, "blue": 95}, {"green": 25, "blue": 75}, {"green": 100}]
        passed = [e for e in events if e["event"] == "passed"]
        assert [e["step"] for e in passed] == [1, 2]
        assert all(e["new"]["requests"] >= 20 and e["new"]["errors"] == 0 for e in passed)
        assert events[-1]["event"] == "finished" and events[-1]["status"] == "promoted"
        assert load.failed() == 0, (load.answers, load.failures[:3])
        assert load.served("green") > 40 and load.served("blue") > 40
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 0, "green": 100}
        status = cli("rollout", "status", iris, "--report", tmp_path / "rollout.html", "--json")
        assert status.exit_code == 0 and status.json()["status"] == "promoted"
        page = (tmp_path / "rollout.html").read_text()
        assert "<svg" in page and "promoted" in page and "max_p95_increase_ms" in page
    finally:
        cli("delete", iris, "--yes")


def test_a_version_failing_3_percent_is_rolled_back_at_the_first_step(cli, iris):
    try:
        doc, load = first_version(cli, iris)
        second_version(
            iris,
            doc,
            {
                "steps": [{"traffic": 5, "bake": 300}, {"traffic": 100}],
                "guardrails": {"max_error_rate": 0.01, "min_requests": 200, "check_every": 0.5},
            },
            FAILING_RUN,
        )
        with load:
            time.sleep(1)
            pushed = cli("push", iris, "--json")
            served_when_rolled_back = load.served("green")
            time.sleep(1)
        assert pushed.exit_code == ExitCode.ROLLED_BACK, pushed.stdout[-3000:] + pushed.stderr[-2000:]
        error = pushed.json()
        assert error["details"]["guardrail"]["name"] == "max_error_rate"
        assert error["details"]["guardrail"]["limit"] == 0.01 and error["details"]["step"] == 1
        assert "max_error_rate breached at step 1 (5%)" in error["message"]
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 100, "green": 0}
        # every failed request came from green while it had 5%, none after the rollback
        assert load.failed("blue") == 0 and not load.failures
        assert load.served("green") == served_when_rolled_back
        assert 0 < load.failed("green") < 0.1 * served_when_rolled_back
        state = cli("rollout", "status", iris, "--json").json()
        assert state["status"] == "rolled_back" and state["decision"]["guardrail"]["breached"]
        # pushing the same version again retries the rollout (it is not "already deployed")
        with Load(load.uri, load.key, load.body):
            again = cli("push", iris, "--json")
        assert again.exit_code == ExitCode.ROLLED_BACK, again.stdout[-2000:]
        assert again.json()["details"]["step"] == 1
    finally:
        cli("delete", iris, "--yes")


def test_a_version_20_ms_slower_breaches_a_p95_increase_of_10_ms(cli, iris):
    try:
        doc, load = first_version(cli, iris)
        second_version(
            iris,
            doc,
            {
                "steps": [{"traffic": 20, "bake": 300}, {"traffic": 100}],
                "guardrails": {"max_p95_increase_ms": 10, "min_requests": 200, "check_every": 0.5},
            },
            SLOWER_RUN,
        )
        with load:
            time.sleep(1)
            pushed = cli("push", iris, "--json")
        assert pushed.exit_code == ExitCode.ROLLED_BACK, pushed.stdout[-3000:] + pushed.stderr[-2000:]
        guardrail = pushed.json()["details"]["guardrail"]
        assert guardrail["name"] == "max_p95_increase_ms" and guardrail["value"] > 10
        # off a terminal, one line per look on stderr (stdout holds the one JSON document)
        looks = [line for line in pushed.stderr.splitlines() if line.startswith("  rollout: step 1/2 (20%)")]
        assert len(looks) >= 2 and "BREACHED max_p95_increase_ms" in looks[-1]
        assert load.failed() == 0
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 100, "green": 0}
    finally:
        cli("delete", iris, "--yes")


def _push_killed_in_step_2(iris: Path, env: dict[str, str]) -> None:
    """`push` in a process of its own, SIGKILLed once it has looked at step 2."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tdsp_deploy", "push", str(iris), "--json-lines"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == "check" and event["step"] == 2:
                    break
        else:
            pytest.fail("push ended before step 2")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)


def test_sigkill_in_step_2_leaves_its_split_then_resume_finishes_and_abort_returns(cli, iris):
    env = dict(os.environ)
    steps = [{"traffic": 10, "bake": 1}, {"traffic": 50, "bake": 60}, {"traffic": 100}]
    guardrails = {"max_error_rate": 0.05, "min_requests": 10, "check_every": 0.5}
    try:
        doc, load = first_version(cli, iris)
        with load:
            second_version(iris, doc, {"steps": steps, "guardrails": guardrails})
            _push_killed_in_step_2(iris, env)
            assert cli("status", iris, "--json").json()["traffic"] == {"blue": 50, "green": 50}
            state = cli("rollout", "status", iris, "--json").json()
            assert state["status"] == "running" and state["step"] == 1 and not state["walker_alive"]
            shown = cli("rollout", "status", iris)
            assert "rollout resume" in shown.stderr
            # the bake of step 2 is a minute: resume, then promote it by request once it is walking
            resumed = subprocess.Popen(
                [sys.executable, "-m", "tdsp_deploy", "rollout", "resume", str(iris), "--json-lines"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
            )
            assert resumed.stdout is not None
            for line in resumed.stdout:
                if line.startswith("{") and json.loads(line)["event"] == "check":
                    break
            promoted = cli("rollout", "promote", iris, "--json")
            assert resumed.wait(timeout=60) == 0
            assert promoted.exit_code == 0 and promoted.json()["status"] == "promoted"
            assert cli("status", iris, "--json").json()["traffic"] == {"blue": 0, "green": 100}

            # a third version, killed in step 2 again: abort returns to the control (green) at 100%
            second_version(iris, doc, {"steps": steps, "guardrails": guardrails}, version="warning")
            _push_killed_in_step_2(iris, env)
            assert cli("status", iris, "--json").json()["traffic"] == {"blue": 50, "green": 50}
            aborted = cli("rollout", "abort", iris, "--json")
            assert aborted.exit_code == 0 and aborted.json()["status"] == "aborted"
            assert cli("status", iris, "--json").json()["traffic"] == {"blue": 0, "green": 100}
            time.sleep(0.5)
        assert load.failed() == 0, (load.answers, load.failures[:3])
    finally:
        cli("delete", iris, "--yes")


def test_push_detach_returns_and_the_rollout_goes_on_in_the_background(cli, iris):
    try:
        doc, load = first_version(cli, iris)
        steps = [{"traffic": 50, "bake": 1}, {"traffic": 100}]
        second_version(iris, doc, {"steps": steps, "guardrails": {"min_requests": 10, "check_every": 0.5}})
        with load:
            pushed = cli("push", iris, "--detach", "--json")
            assert pushed.exit_code == 0, pushed.stderr[-2000:]
            assert pushed.json()["rollout"]["status"] == "running"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                state = cli("rollout", "status", iris, "--json").json()
                if state["status"] != "running":
                    break
                time.sleep(0.5)
        assert state["status"] == "promoted", state
        assert [p["step"] for p in state["steps_passed"]] == [1]
        assert cli("status", iris, "--json").json()["traffic"] == {"blue": 0, "green": 100}
        assert load.failed() == 0
    finally:
        cli("delete", iris, "--yes")
