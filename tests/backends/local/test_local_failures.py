"""Failure paths of a push on the local target, as a new user meets them: interrupted twice,
a busy port, a failed deployment's log, no smoke test, a missing file. After each, no broken
endpoint and no process of the endpoint is left (conftest's no_process_left checks the last)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.state import EndpointFiles
from tdsp_deploy.errors import ExitCode

SLOW_INIT = """

import time as _time


def init():
    _time.sleep(30)
"""


def _starter(cli, root: Path, name: str) -> Path:
    assert cli("init", root / name, "--name", name).exit_code == 0
    return root / name / "deploy.yaml"


def _push_in_background(manifest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tdsp_deploy", "push", str(manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(stream, text: str, timeout: float = 60) -> list[str]:  # type: ignore[no-untyped-def]
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"never saw {text!r}: {''.join(seen)}")


def _endpoint_processes(home: Path) -> list[psutil.Process]:
    """Every live process started for an endpoint under ``home`` (its command line names it)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(home) in " ".join(process.info["cmdline"] or []) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _slow_push_interrupted_once(cli, root: Path, name: str) -> tuple[Path, subprocess.Popen[str]]:  # type: ignore[no-untyped-def]
    """A push whose deployment takes 30 s to start, sent one Ctrl-C while it waits for it."""
    manifest = _starter(cli, root, name)
    with open(manifest.parent / "score.py", "a") as script:
        script.write(SLOW_INIT)
    push = _push_in_background(manifest)
    try:
        _wait_for_line(push.stderr, "waiting for blue to be healthy")
    except BaseException:
        push.kill()
        raise
    push.send_signal(signal.SIGINT)
    return manifest, push


def test_two_ctrl_c_50_ms_apart_roll_back_completely(cli, tmp_path, state_home):
    manifest, push = _slow_push_interrupted_once(cli, tmp_path, "twice")
    try:
        time.sleep(0.05)
        push.send_signal(signal.SIGINT)  # lands in the rollback the first one started
        _, errors = push.communicate(timeout=120)
    finally:
        if push.poll() is None:
            push.kill()
    assert push.returncode == ExitCode.INTERRUPTED, errors
    assert "Traceback" not in errors
    # The endpoint's router and supervisor may stay (an endpoint with no deployment); the
    # deployment's server may not, and whatever runs, status shows and delete stops.
    left = [p for p in _endpoint_processes(state_home) if "slot_server" in " ".join(p.cmdline())]
    assert left == [], [p.cmdline() for p in left]
    status = cli("status", "--all", "--json").json()
    for endpoint in status["endpoints"]:
        assert endpoint["slots"] == []
        assert endpoint["details"]["stray_processes"] == []
    assert cli("delete", manifest, "--yes").exit_code == 0
    assert _endpoint_processes(state_home) == []


def test_a_ctrl_c_after_the_interrupted_push_said_so_does_not_change_its_exit(cli, tmp_path, state_home):
    # The second Ctrl-C may land after the rollback, while the process is already exiting: it
    # used to end the process by SIGINT (-2) instead of 130, or print a traceback on the way out.
    manifest, push = _slow_push_interrupted_once(cli, tmp_path, "late")
    try:
        seen = _wait_for_line(push.stderr, "error: push interrupted")
        for _ in range(50):  # every moment of the exit, until the process is gone
            if push.poll() is not None:
                break
            push.send_signal(signal.SIGINT)
            time.sleep(0.001)
        _, rest = push.communicate(timeout=120)
    finally:
        if push.poll() is None:
            push.kill()
        cli("delete", manifest, "--yes")
    errors = "".join(seen) + rest
    assert push.returncode == ExitCode.INTERRUPTED, errors
    assert "Traceback" not in errors and "Exception ignored" not in errors, errors


def test_a_push_killed_mid_way_is_rolled_back_by_the_next_push(cli, tmp_path, state_home):
    manifest = _starter(cli, tmp_path, "killed")
    script = manifest.parent / "score.py"
    original = script.read_text()
    script.write_text(original + SLOW_INIT)
    push = _push_in_background(manifest)
    try:
        _wait_for_line(push.stderr, "waiting for blue to be healthy")
        push.kill()  # no chance to roll back: the deployment stays, recorded as unfinished
        push.wait(timeout=30)
        status = cli("status", manifest, "--json").json()
        assert [s["name"] for s in status["slots"]] == ["blue"]
        script.write_text(original)
        again = cli("push", manifest, "--json")
        assert again.exit_code == 0, again.stderr
        assert any("left by a push that did not finish" in w for w in again.json()["warnings"])
        slow = [p for p in _endpoint_processes(state_home) if "/r1/" in " ".join(p.cmdline())]
        assert slow == []  # the killed push's deployment (revision r1) is stopped
    finally:
        cli("delete", manifest, "--yes")


def test_status_shows_and_delete_stops_a_process_no_record_accounts_for(cli, tmp_path, state_home):
    manifest = _starter(cli, tmp_path, "stray")
    try:
        assert cli("push", manifest).exit_code == 0
        files = EndpointFiles("stray")
        # what a command killed between starting a process and recording it would leave
        ref = processes.spawn(
            [sys.executable, "-c", "import time; time.sleep(600)", str(state_home)],
            cwd=tmp_path,
            env=dict(os.environ),
            log_path=tmp_path / "stray.log",
        )
        files.remember(ref, "deployment", alive=processes.is_running)
        status = cli("status", manifest, "--json").json()
        assert status["details"]["stray_processes"] == [ref.pid]
    finally:
        assert cli("delete", manifest, "--yes").exit_code == 0
    assert not processes.is_running(ref)


def test_a_push_on_a_busy_port_leaves_no_endpoint_behind(cli, tmp_path):
    manifest = _starter(cli, tmp_path, "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = manifest.read_text().replace("  # port: 8080", f"  port: {port}")
        manifest.write_text(text)
        result = cli("push", manifest, "--json")
        assert result.exit_code == ExitCode.BACKEND, result.stdout
        assert f"port {port}" in result.json()["message"]
    status = cli("status", manifest, "--json")
    assert status.exit_code == ExitCode.BACKEND  # not deployed, rather than "router: stopped"
    assert cli("status", "--all", "--json").json() == {"endpoints": []}


def test_a_failed_deployments_log_outlives_the_rollback(cli, tmp_path):
    manifest = _starter(cli, tmp_path, "failing")
    with open(manifest.parent / "score.py", "a") as script:
        script.write('\n\ndef init():\n    raise RuntimeError("the model is broken: 7f3a")\n')
    result = cli("push", manifest)
    try:
        assert result.exit_code == ExitCode.DEPLOYMENT_FAILED
        assert result.stderr.count("rollback: 'blue' removed") == 1
        hint = next(line for line in result.stderr.splitlines() if "hint:" in line)
        named = Path(hint.split("kept at ")[1].split(" ")[0])
        assert named.is_file() and "the model is broken: 7f3a" in named.read_text()
        assert "--failed" in hint
        kept = cli("logs", manifest, "--failed", "--tail", "1000")
        assert kept.exit_code == 0 and "the model is broken: 7f3a" in kept.stdout
        by_name = cli("logs", manifest, "--failed", "--deployment", "blue", "--json")
        assert any("the model is broken: 7f3a" in line for line in by_name.json()["lines"])
        assert cli("logs", manifest, "--failed", "--deployment", "green").exit_code == ExitCode.USAGE
    finally:
        cli("delete", manifest, "--yes")


def test_a_push_with_no_smoke_test_warns_before_giving_traffic(cli, tmp_path):
    manifest = _starter(cli, tmp_path, "untested")
    text = manifest.read_text()
    manifest.write_text(text[: text.index("smoke_test:")] + text[text.index("# How the new deployment") :])
    try:
        result = cli("push", manifest)
        assert result.exit_code == 0, result.stderr
        warning = "no smoke_test: 'blue' gets 100% of the traffic"
        assert warning in result.stderr
        assert result.stderr.index(warning) < result.stderr.index("setting")
    finally:
        cli("delete", manifest, "--yes")


def test_a_missing_file_gets_a_hint_about_paths_not_keys(cli, tmp_path):
    manifest = _starter(cli, tmp_path, "nofile")
    manifest.write_text(manifest.read_text().replace("request: sample-request.json", "request: missing.json"))
    result = cli("validate", manifest, "--json")
    assert result.exit_code == ExitCode.USAGE
    doc = result.json()
    assert "missing.json" in json.dumps(doc)
    assert "schema" not in doc["hint"] and str(manifest.parent) in doc["hint"]
