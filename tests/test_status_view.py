"""`status --watch` and `status --all`, against real local endpoints and their router's metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdsp_deploy.backends.base import SlotCounters
from tdsp_deploy.backends.local.counters import parse_prometheus
from tdsp_deploy.backends.local.metrics import Measurements
from tdsp_deploy.errors import ExitCode
from tdsp_deploy.status_view import quantile_ms


def test_counters_and_p95_come_from_the_routers_own_exposition():
    measurements = Measurements("e", None)
    for i in range(100):  # 95 fast answers (3 ms) and 5 slow ones (300 ms); one error
        measurements.live("blue", 500 if i == 0 else 200, 0.3 if i >= 95 else 0.003, f"r{i}", False)
    measurements.live("green", 200, 0.02, "g", False)
    counters = parse_prometheus(measurements.prometheus().decode())
    assert set(counters) == {"blue", "green"}
    assert (counters["blue"].requests, counters["blue"].errors) == (100, 1)
    p95 = quantile_ms(counters["blue"], 0.95)
    assert 2.5 <= p95 <= 5.0  # inside the 2.5-5 ms bucket, where the 95th answer is
    assert quantile_ms(counters["blue"], 0.99) > 250
    assert quantile_ms(SlotCounters(), 0.95) is None
    window = counters["blue"].minus(
        SlotCounters(requests=95, errors=1, buckets=((0.005, 95), (float("inf"), 95)))
    )
    assert window.requests == 5 and window.errors == 0


def test_request_log_lines_are_json_whatever_the_request_id_holds(tmp_path):
    """The live line is formatted by hand on the router's hot path: it must stay JSON."""
    log = tmp_path / "requests.jsonl"
    measurements = Measurements("e", str(log))
    odd_id = 'a "quoted" id\\ with\ta tab, \u00e9 and \u2603\n'
    measurements.live("blue", 200, 0.0012345, odd_id, True)
    measurements.live("green", 503, 2.5, "plain", False)
    measurements.shadow("green", 200, 0.004, "plain", False)
    measurements.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0] == {
        "kind": "live",
        "t": lines[0]["t"],
        "id": odd_id,
        "deployment": "blue",
        "status": 200,
        "latency_ms": 1.234,
        "pinned": True,
    }
    assert abs(lines[0]["t"] - time.time()) < 60
    assert (lines[1]["status"], lines[1]["latency_ms"], lines[1]["pinned"]) == (503, 2500.0, False)
    assert (lines[2]["kind"], lines[2]["agreed"]) == ("shadow", False)


def test_the_table_and_the_plain_status_show_restarts_with_their_reason_and_time():
    """`status` prints what the supervisor did to each slot: how often, why, when last."""
    import io

    from tdsp_deploy.backends.base import EndpointStatus, SlotStatus
    from tdsp_deploy.output import Environment
    from tdsp_deploy.status_view import EndpointSnapshot, restart_lines, table

    at = time.mktime((2026, 11, 30, 7, 41, 2, 0, 0, -1))
    hung = {"restarts": 2, "last_restart_reason": "liveness", "last_restart_at": at, "deployed_at": at}
    ended = {"restarts": 1, "last_restart_reason": "exit", "last_restart_at": at}
    status = EndpointStatus(
        "iris",
        "local",
        True,
        "http://127.0.0.1:1/score",
        slots=[
            SlotStatus("blue", "healthy", 50, details=hung),
            SlotStatus("green", "healthy", 50, details=ended),
            SlotStatus("red", "healthy", 0, details={"restarts": 0}),
        ],
    )
    stderr = io.StringIO()
    env = Environment(stdout=io.StringIO(), stderr=stderr, stderr_isatty=False, environ={})
    env.console().print(table(env, [EndpointSnapshot(status, at, {}, None)]))
    rows = {
        line.split("|")[1].strip(): line for line in stderr.getvalue().splitlines() if line.count("|") > 3
    }
    assert "restarts" in rows["deployment"]
    assert "2 (hung, 11-30 07:41)" in rows["blue"]
    assert "1 (ended, 11-30 07:41)" in rows["green"]
    assert "(" not in rows["red"]
    calm = EndpointStatus(
        "iris", "local", True, slots=[SlotStatus("red", "healthy", 100, details={"restarts": 0})]
    )
    stderr.truncate(0)
    env.console().print(table(env, [EndpointSnapshot(calm, at, {}, None)]))
    assert "deployed" in stderr.getvalue() and "restarts" not in stderr.getvalue()  # only when there are some
    assert restart_lines(calm) == []
    assert restart_lines(status) == [
        "blue: restarted 2 times by the supervisor, last at 2026-11-30 07:41:02 "
        "(it hung: its liveness probe went unanswered)",
        "green: restarted 1 time by the supervisor, last at 2026-11-30 07:41:02 (its process ended)",
    ]


def test_the_endpoints_table_shows_each_deployments_environment_and_python():
    import io

    from tdsp_deploy.backends.base import EndpointStatus, SlotStatus
    from tdsp_deploy.output import Environment
    from tdsp_deploy.render_text import status_table

    own = {"environment": {"hash": "0123456789abcdef", "python": "3.11.9"}}
    shared = {"environment": {"hash": "shared", "python": "3.12.1"}}
    status = EndpointStatus(
        "iris",
        "local",
        True,
        slots=[
            SlotStatus("blue", "healthy", 50, details=own),
            SlotStatus("green", "healthy", 50, details=shared),
        ],
    )
    stderr = io.StringIO()
    env = Environment(stdout=io.StringIO(), stderr=stderr, stderr_isatty=False, environ={})
    status_table(env, status)
    rows = {
        line.split("|")[1].strip(): line for line in stderr.getvalue().splitlines() if line.count("|") > 3
    }
    assert "environment" in rows["deployment"]
    assert "01234567 py3.11.9" in rows["blue"] and "shared py3.12.1" in rows["green"]
    other = EndpointStatus("iris", "azureml", True, slots=[SlotStatus("blue", "healthy", 100, details={})])
    stderr.truncate(0)
    status_table(env, other)
    assert "environment" not in stderr.getvalue()  # a target that reports none gets no column


def _starter(cli, root: Path, name: str) -> Path:
    assert cli("init", root / name, "--name", name).exit_code == 0
    return root / name / "deploy.yaml"


def _invoke(cli, manifest: Path, times: int) -> None:
    for _ in range(times):
        assert cli("invoke", manifest, "--request", manifest.parent / "sample-request.json").exit_code == 0


def test_watch_and_all_follow_real_endpoints(cli, tmp_path):
    first, second = _starter(cli, tmp_path, "watched"), _starter(cli, tmp_path, "other")
    assert cli("status", "--all", "--json").json() == {"endpoints": []}
    try:
        for manifest in (first, second):
            pushed = cli("push", manifest, "--json")
            assert pushed.exit_code == 0, pushed.stderr
        _invoke(cli, first, 6)

        # without a terminal: one JSON document per refresh
        watched = cli("status", first, "--watch", "--interval", "0.2", "--count", "2")
        assert watched.exit_code == 0, watched.stderr
        lines = [json.loads(line) for line in watched.stdout.splitlines()]
        assert len(lines) == 2
        endpoint = lines[0]["endpoints"][0]
        assert endpoint["name"] == "watched" and endpoint["traffic"] == {"blue": 100}
        assert endpoint["metrics"]["blue"]["requests"] >= 6  # the smoke test's requests too
        assert endpoint["metrics"]["blue"]["p95_ms"] > 0
        assert endpoint["last_deploy"]["deployment"] == "blue"
        assert lines[1]["endpoints"][0]["metrics"]["blue"]["requests_per_second"] is not None

        # every endpoint of this machine, without a manifest
        every = cli("status", "--all", "--json")
        assert every.exit_code == 0
        assert [e["name"] for e in every.json()["endpoints"]] == ["other", "watched"]
        human = cli("status", "--all")
        assert "watched" in human.stderr and "other" in human.stderr and "req/s" in human.stderr

        # on a terminal: a table redrawn in place
        table = cli("status", first, "--watch", "--interval", "0.1", "--count", "2", isatty=True)
        assert table.exit_code == 0 and table.stdout == ""
        assert "blue" in table.stderr and "p95" in table.stderr and "Ctrl-C" in table.stderr

        # a killed slot is reported by the watch's exit code, as by plain status
        slot_pid = cli("status", first, "--json").json()["slots"][0]["details"]["pid"]
        os.kill(slot_pid, signal.SIGKILL)
        _wait_gone(slot_pid)
        down = cli("status", "--all", "--watch", "--count", "1", "--json")
        assert down.exit_code == ExitCode.DEPLOYMENT_FAILED
        states = {e["name"]: e["slots"][0]["state"] for e in json.loads(down.stdout)["endpoints"]}
        # The supervisor restarts a killed slot after half a second: on a busy machine status may
        # already see the new process, still loading its model ("unhealthy"), not the dead one.
        assert states["other"] == "healthy" and states["watched"] in ("stopped", "unhealthy"), states
    finally:
        cli("delete", first, "--yes")
        cli("delete", second, "--yes")


def test_ctrl_c_ends_the_watch_with_130_and_whole_lines(cli, tmp_path):
    manifest = _starter(cli, tmp_path, "interrupted")
    try:
        assert cli("push", manifest).exit_code == 0
        watcher = subprocess.Popen(
            [sys.executable, "-m", "tdsp_deploy", "status", str(manifest), "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first_line = watcher.stdout.readline()  # type: ignore[union-attr]
        assert json.loads(first_line)["endpoints"][0]["name"] == "interrupted"
        watcher.send_signal(signal.SIGINT)
        rest, errors = watcher.communicate(timeout=60)
        assert watcher.returncode == 130, errors
        assert "Traceback" not in errors
        for line in rest.splitlines():
            json.loads(line)
    finally:
        cli("delete", manifest, "--yes")


def test_status_needs_a_manifest_or_all(cli, tmp_path):
    assert cli("status").exit_code == ExitCode.USAGE
    both = cli("status", tmp_path / "deploy.yaml", "--all", "--json")
    assert both.exit_code == ExitCode.USAGE and "--all" in both.json()["message"]


def _wait_gone(pid: int) -> None:
    import psutil

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} did not stop")


class _RaisesCtrlCWhenCollected:
    """Ctrl-C arriving while the garbage collector runs a finalizer (a socket's ``__del__``
    closing it): Python calls the signal handler there, at whatever point it is."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("table", [False, True])
def test_ctrl_c_inside_a_finalizer_still_ends_the_watch(table):
    import io

    from tdsp_deploy.output import Environment
    from tdsp_deploy.status_view import watch

    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(stdout=stdout, stderr=stderr, stderr_isatty=table, environ={"NO_COLOR": "1"})
    taken = []

    def take() -> list:
        taken.append(1)
        if len(taken) == 2:
            _RaisesCtrlCWhenCollected()  # collected at once: Ctrl-C during the refresh
        return []

    # A KeyboardInterrupt raised in __del__ is printed and swallowed, so the watch went on to
    # its fifth refresh and exited 0 instead of 130.
    assert watch(env, take, interval=0.01, count=5) == 130
    assert len(taken) == 2
    assert "Exception ignored" not in stderr.getvalue()
    for line in stdout.getvalue().splitlines():
        json.loads(line)
