"""A slot that hangs is restarted; one that is only busy is not.

The endpoint's supervisor probes each slot's ``GET /`` with the manifest's
``target.liveness_probe`` (Azure ML's settings). These tests push the iris example with small
settings, freeze a slot outright (SIGSTOP to every process of its group: it keeps its port but
answers nothing) and keep another busy with one slow request, shorter than
timeout x failure_threshold.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

# Restart after 4 failed probes in a row, each waiting 2 s, one a second: about 8 s of silence.
PROBE = {"initial_delay": 1, "period": 1, "timeout": 2, "failure_threshold": 4, "success_threshold": 1}
SLOW_S = 4.0  # a legitimate request, shorter than timeout x failure_threshold


def wait_for(condition, what: str, timeout: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def call(uri: str, key: str, body: bytes, *, timeout: float = 60) -> tuple[int, bytes]:
    parts = urlsplit(uri)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(
            "POST", parts.path, body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def endpoint(cli, iris):  # type: ignore[no-untyped-def]
    """The iris example with small probe settings and a run() that sleeps when asked to."""
    score = iris.parent / "src" / "score.py"
    score.write_text(
        score.read_text().replace(
            "def run(raw_data):\n",
            "def run(raw_data):\n"
            "    if 'slow' in raw_data:\n"
            "        import time\n"
            f"        time.sleep({SLOW_S})\n"
            "        return {'slow': 'done'}\n",
        )
    )
    doc = yaml.safe_load(iris.read_text())
    doc["target"]["liveness_probe"] = PROBE
    doc["smoke_test"]["latency"] = {"requests": 10, "concurrency": 1, "warmup": 0, "p95_ms": 10_000}
    iris.write_text(yaml.safe_dump(doc))
    pushed = cli("push", iris, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        # 4 s of silence is less than the 60 s a request may take: said, not refused
        assert any(
            "target.liveness_probe gives up on a slot after 4 s" in w for w in pushed.json()["warnings"]
        )
        key = cli("credentials", iris, "--json").json()["primary_key"]
        yield iris, pushed.json()["scoring_uri"], key
    finally:
        cli("delete", iris, "--yes")


def blue(cli, manifest: Path) -> dict:  # type: ignore[no-untyped-def]
    slots = cli("status", manifest, "--json").json()["slots"]
    return next(s for s in slots if s["name"] == "blue")


def test_a_frozen_slot_is_killed_and_restarted_and_serves_again(cli, endpoint, state_home):
    manifest, uri, key = endpoint
    sample = (manifest.parent / "sample-request.json").read_bytes()
    before = blue(cli, manifest)["details"]
    frozen = [psutil.Process(before["pid"]), *psutil.Process(before["pid"]).children(recursive=True)]
    for process in frozen:  # the server and its workers: the port stays open, nothing answers
        process.send_signal(signal.SIGSTOP)

    def restarted() -> bool:
        slot = blue(cli, manifest)
        return slot["state"] == "healthy" and slot["details"]["restarts"] == 1

    wait_for(restarted, "the supervisor to restart the frozen slot", timeout=180)
    gone, alive = psutil.wait_procs(frozen, timeout=30)
    assert alive == [], alive  # the whole frozen group was killed, not left stopped
    status, body = call(uri, key, sample)
    assert status == 200 and "predictions" in json.loads(body), body

    after = blue(cli, manifest)["details"]
    assert after["port"] == before["port"] and after["pid"] != before["pid"]
    assert after["last_restart_reason"] == "liveness" and after["last_restart_at"] > 0
    supervisor = json.loads((state_home / "endpoints" / "iris" / "supervisor.json").read_text())
    (entry,) = supervisor["revisions"].values()
    assert entry["reasons"] == {"liveness": 1} and entry["last_reason"] == "liveness"
    logs = "\n".join(cli("logs", manifest, "--deployment", "blue", "--json").json()["lines"])
    assert "did not answer its liveness probe 4 times in a row" in logs, logs[-2000:]
    assert "because it hung" in logs
    # the human table says it too
    human = cli("status", manifest)
    assert "blue: restarted 1 time by the supervisor, last at " in human.stderr
    assert "(it hung: its liveness probe went unanswered)" in human.stderr
    table = cli("status", "--all").stderr
    assert "restarts" in table and "1 (hung, " in table, table


def test_a_slot_busy_with_a_slow_request_is_not_restarted(cli, endpoint, state_home):
    manifest, uri, key = endpoint
    before = blue(cli, manifest)["details"]
    answers: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: answers.append(call(uri, key, b'{"slow": true}')))
    started = time.monotonic()
    slow.start()
    slow.join(timeout=120)
    assert answers == [(200, b'{"slow": "done"}')]
    assert time.monotonic() - started >= SLOW_S
    supervisor_log = state_home / "endpoints" / "iris" / "supervisor.log"
    # The probes that waited behind the request failed, and were counted...
    assert "liveness probe failed, 1 of 4 in a row" in supervisor_log.read_text()
    # ...and once it was done the next probes answered, so nothing was restarted.
    time.sleep(3 * PROBE["period"] + PROBE["timeout"])
    after = blue(cli, manifest)["details"]
    assert (after["pid"], after["restarts"]) == (before["pid"], 0)
    assert "killed" not in supervisor_log.read_text()
    assert not (state_home / "endpoints" / "iris" / "supervisor.json").exists()
