"""The local target end to end: real inference-server processes, a real router, real HTTP on
loopback. Every test deletes what it deployed; the conftest guard fails any test that
leaves a process behind."""

from __future__ import annotations

import json
import os
import re
import stat
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tdsp_deploy.errors import ExitCode

pytestmark = pytest.mark.timeout(240)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@pytest.fixture
def deployed(cli, iris):  # type: ignore[no-untyped-def]
    """The iris example pushed to the local target; deleted afterwards whatever happens."""
    result = cli("push", iris, "--json")
    try:
        assert result.exit_code == 0, result.stderr
        yield iris, result.json()
    finally:
        cli("delete", iris, "--yes")


def keys(cli, manifest: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    result = cli("credentials", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_push_serves_the_model_behind_the_key(cli, deployed):
    manifest, pushed = deployed
    assert pushed["deployment"] == "blue"
    assert pushed["traffic"] == {"blue": 100}
    assert pushed["smoke"]["answer"]["passed"] is True
    assert pushed["smoke"]["latency"]["errors"] == 0
    uri = pushed["scoring_uri"]
    assert uri.startswith("http://127.0.0.1:") and uri.endswith("/score")
    body = (manifest.parent / "sample-request.json").read_bytes()
    expected = json.loads((manifest.parent / "expected-response.json").read_text())

    status, _, answer = post(uri, body)
    assert status == 401
    assert "Authorization: Bearer" in json.loads(answer)["message"]
    assert post(uri, body, {"Authorization": "Bearer wrong-key"})[0] == 401

    for key in keys(cli, manifest).values():  # both keys work
        status, headers, answer = post(uri, body, {"Authorization": f"Bearer {key}"})
        assert status == 200
        assert headers["azureml-model-deployment"] == "blue"
        assert json.loads(answer)["predictions"] == expected["predictions"]


def test_slots_listen_on_loopback_only_and_keys_are_private(cli, deployed, state_home):
    manifest, pushed = deployed
    status = cli("status", manifest, "--json").json()
    slot = status["slots"][0]
    server = psutil.Process(slot["details"]["pid"])
    listening = {  # the server's workers hold the listening socket
        (c.laddr.ip, c.laddr.port)
        for p in [server, *server.children(recursive=True)]
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", slot["details"]["port"])}
    key_file = state_home / "endpoints" / "iris" / "keys.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # no command but `credentials` prints a key
    secret = keys(cli, manifest)["primary_key"]
    for command in (["status", manifest], ["status", manifest, "--json"], ["logs", manifest]):
        result = cli(*command)
        assert secret not in result.stdout + result.stderr


def test_pinning_and_router_errors(cli, deployed):
    manifest, pushed = deployed
    uri = pushed["scoring_uri"]
    auth = {"Authorization": f"Bearer {keys(cli, manifest)['primary_key']}"}
    body = (manifest.parent / "sample-request.json").read_bytes()
    status, headers, _ = post(uri, body, {**auth, "azureml-model-deployment": "blue"})
    assert (status, headers["azureml-model-deployment"]) == (200, "blue")
    status, _, answer = post(uri, body, {**auth, "azureml-model-deployment": "green"})
    assert status == 404 and "deployment 'green' not found" in json.loads(answer)["message"]
    # the model raises on a bad request: a 500 from the slot, and the endpoint keeps serving
    status, headers, _ = post(uri, b'{"rows": []}', auth)
    assert status == 500 and headers["azureml-model-deployment"] == "blue"
    assert post(uri, body, auth)[0] == 200


def test_status_invoke_logs_and_a_repeated_push(cli, deployed):
    manifest, pushed = deployed
    status = cli("status", manifest, "--json")
    assert status.exit_code == 0
    doc = status.json()
    assert doc["scoring_uri"] == pushed["scoring_uri"]
    assert doc["details"]["router"]["state"] == "running"
    (slot,) = doc["slots"]
    assert slot["state"] == "healthy" and slot["traffic"] == 100
    assert slot["model_version"] == pushed["model_version"]

    invoked = cli("invoke", manifest, "--request", manifest.parent / "sample-request.json", "--json")
    assert invoked.exit_code == 0
    assert invoked.json()["deployment"] == "blue"
    expected = json.loads((manifest.parent / "expected-response.json").read_text())
    assert invoked.json()["response"]["predictions"] == expected["predictions"]

    logs = cli("logs", manifest, "--tail", "5", "--json")
    assert logs.exit_code == 0 and len(logs.json()["lines"]) == 5
    assert any("POST /score" in line for line in logs.json()["lines"])
    # a healthy deployment's whole log: no error, no warning, no traceback (the server writes
    # "<time> E [pid] ..." for an error and " W " for a warning)
    whole = cli("logs", manifest, "--tail", "100000", "--json").json()["lines"]
    assert any("Users's init has completed successfully" in line for line in whole)
    assert [line for line in whole if re.search(r" [EWC] \[\d+\] |Traceback|rror while", line)] == []

    again = cli("push", manifest, "--json")
    assert again.exit_code == 0 and again.json()["unchanged"] is True


def test_new_version_goes_to_green_then_blue_is_deletable(cli, deployed):
    manifest, pushed = deployed
    doc = yaml.safe_load(manifest.read_text())
    doc["environment"]["variables"]["LOG_LEVEL"] = "debug"  # a new configuration
    manifest.write_text(yaml.safe_dump(doc))
    result = cli("push", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["deployment"] == "green"
    assert result.json()["traffic"] == {"blue": 0, "green": 100}
    assert (
        cli("invoke", manifest, "--request", manifest.parent / "sample-request.json", "--json").json()[
            "deployment"
        ]
        == "green"
    )
    # the old slot still answers when pinned, until it is deleted
    assert (
        cli(
            "invoke", manifest, "--request", manifest.parent / "sample-request.json", "-d", "blue", "--json"
        ).json()["deployment"]
        == "blue"
    )
    refused = cli("delete", manifest, "--deployment", "green", "--yes")
    assert refused.exit_code == ExitCode.USAGE and "takes 100% of the traffic" in refused.stderr
    assert cli("delete", manifest, "--deployment", "blue", "--yes").exit_code == 0
    assert [s["name"] for s in cli("status", manifest, "--json").json()["slots"]] == ["green"]


def test_failed_init_rolls_back_and_the_old_version_keeps_serving(cli, deployed):
    manifest, pushed = deployed
    score = manifest.parent / "src" / "score.py"
    score.write_text(
        score.read_text() + "\n\ndef init():\n    raise RuntimeError('the model file is corrupt')\n"
    )
    result = cli("push", manifest)
    assert result.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "exited during start-up" in result.stderr
    assert "the model file is corrupt" in result.stderr  # the log tail shows why
    assert "rollback: 'green' removed" in result.stderr
    status = cli("status", manifest, "--json").json()
    assert [(s["name"], s["traffic"], s["state"]) for s in status["slots"]] == [("blue", 100, "healthy")]
    assert cli("invoke", manifest, "--request", manifest.parent / "sample-request.json").exit_code == 0


def test_wrong_answer_rolls_back_with_exit_5(cli, deployed):
    manifest, pushed = deployed
    expected = manifest.parent / "expected-response.json"
    doc = json.loads(expected.read_text())
    doc["predictions"][0] = "virginica"
    expected.write_text(json.dumps(doc))
    score = manifest.parent / "src" / "score.py"
    score.write_text(score.read_text() + "\n# a change, so that the push deploys a new slot\n")
    result = cli("push", manifest, "--json")
    assert result.exit_code == ExitCode.SMOKE_FAILED
    error = result.json()
    assert '$.predictions[0]: expected "virginica", got "setosa"' in error["message"]
    assert error["details"]["rolled_back"] is True
    status = cli("status", manifest, "--json").json()
    assert [(s["name"], s["traffic"]) for s in status["slots"]] == [("blue", 100)]


def test_latency_objective_missed_exits_6(cli, iris):
    doc = yaml.safe_load(iris.read_text())
    doc["smoke_test"]["latency"] = {"requests": 20, "concurrency": 2, "warmup": 0, "p95_ms": 0.001}
    iris.write_text(yaml.safe_dump(doc))
    try:
        result = cli("push", iris, "--json")
        assert result.exit_code == ExitCode.LATENCY_MISSED
        assert "above the objective of 0.001 ms" in result.json()["message"]
        assert cli("status", iris, "--json").json()["slots"] == []
    finally:
        cli("delete", iris, "--yes")


def test_oversized_body_gets_413_and_the_endpoint_keeps_serving(cli, iris):
    doc = yaml.safe_load(iris.read_text())
    doc["target"]["max_request_mb"] = 0.01
    iris.write_text(yaml.safe_dump(doc))
    try:
        pushed = cli("push", iris, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        uri = pushed.json()["scoring_uri"]
        auth = {"Authorization": f"Bearer {keys(cli, iris)['primary_key']}"}
        status, _, answer = post(uri, b"x" * 20_000, auth)
        assert status == 413 and "target.max_request_mb" in json.loads(answer)["message"]
        assert post(uri, (iris.parent / "sample-request.json").read_bytes(), auth)[0] == 200
    finally:
        cli("delete", iris, "--yes")


def test_delete_stops_every_process_and_removes_state(cli, iris, state_home):
    pushed = cli("push", iris, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    status = cli("status", iris, "--json").json()
    pids = [status["details"]["router"]["pid"], status["slots"][0]["details"]["pid"]]
    assert all(psutil.pid_exists(pid) for pid in pids)
    deleted = cli("delete", iris, "--yes", "--json")
    assert deleted.exit_code == 0 and deleted.json()["deleted"] is True
    assert not (state_home / "endpoints" / "iris").exists()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    missing = cli("status", iris, "--json")
    assert missing.exit_code == ExitCode.BACKEND and missing.json()["error"] == "not_found"


def test_processes_outlive_the_cli(iris, state_home):
    """A user pushes, the CLI exits, and other programs call the endpoint."""
    import subprocess
    import sys

    env = {**os.environ, "TDSP_DEPLOY_HOME": str(state_home)}
    command = [sys.executable, "-m", "tdsp_deploy"]
    try:
        pushed = subprocess.run(
            [*command, "push", str(iris), "--json"], env=env, capture_output=True, timeout=120
        )
        assert pushed.returncode == 0, pushed.stderr.decode()
        uri = json.loads(pushed.stdout)["scoring_uri"]
        key = json.loads(
            subprocess.run(
                [*command, "credentials", str(iris), "--json"], env=env, capture_output=True, timeout=60
            ).stdout
        )["primary_key"]
        status, _, _ = post(
            uri, (iris.parent / "sample-request.json").read_bytes(), {"Authorization": f"Bearer {key}"}
        )
        assert status == 200
    finally:
        subprocess.run([*command, "delete", str(iris), "--yes"], env=env, capture_output=True, timeout=60)


def test_the_script_sees_the_variables_and_a_single_file_model_as_on_azure_ml(cli, tmp_path):
    """A model that is one file keeps its name under AZUREML_MODEL_DIR; variables are passed;
    a requirement this environment lacks is a warning, in validate and in push."""
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01")
    (tmp_path / "score.py").write_text(
        "import json, os\n"
        "def init():\n"
        "    global seen\n"
        "    root = os.environ['AZUREML_MODEL_DIR']\n"
        "    seen = {'files': sorted(os.listdir(root)), 'greeting': os.environ['GREETING'],\n"
        "            'size': os.path.getsize(os.path.join(root, 'weights.bin'))}\n"
        "def run(raw_data):\n"
        "    return seen\n"
    )
    (tmp_path / "request.json").write_text("{}")
    (tmp_path / "requirements.txt").write_text("a-distribution-nobody-installed>=1\n")
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": "layout",
                "model": {"path": "weights.bin"},
                "scoring": {"script": "score.py"},
                # shared: what this checks is the warning about the CLI's own environment
                "environment": {
                    "requirements": "requirements.txt",
                    "variables": {"GREETING": "hello"},
                    "isolation": "shared",
                },
                "smoke_test": {
                    "request": "request.json",
                    "latency": {"requests": 5, "concurrency": 1, "warmup": 0},
                },
            }
        )
    )
    validated = cli("validate", manifest, "--json")
    assert any("a-distribution-nobody-installed" in w for w in validated.json()["warnings"])
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        assert any("a-distribution-nobody-installed" in w for w in pushed.json()["warnings"])
        answer = cli("invoke", manifest, "--request", tmp_path / "request.json", "--json").json()["response"]
        assert answer == {"files": ["weights.bin"], "greeting": "hello", "size": 2}
    finally:
        cli("delete", manifest, "--yes")


def test_a_second_push_waits_for_the_lock_then_gives_up(cli, iris):
    from tdsp_deploy.backends.local.state import EndpointFiles
    from tdsp_deploy.locks import FileLock

    with FileLock(EndpointFiles("iris").lock_path, "iris", timeout=1):
        result = cli("push", iris, "--lock-timeout", "0.5", "--json")
    assert result.exit_code == ExitCode.BACKEND
    assert "locked by another command" in result.json()["message"]
    assert "waiting for it" in result.stderr
    assert cli("status", iris, "--json").exit_code == ExitCode.BACKEND  # nothing was deployed


def test_regenerated_keys_replace_the_old_ones_at_once(cli, deployed):
    manifest, pushed = deployed
    old = keys(cli, manifest)["primary_key"]
    body = (manifest.parent / "sample-request.json").read_bytes()
    assert post(pushed["scoring_uri"], body, {"Authorization": f"Bearer {old}"})[0] == 200
    rotated = cli("credentials", manifest, "--regenerate", "--json")
    assert rotated.exit_code == 0
    new = rotated.json()["primary_key"]
    assert new != old and len(new) >= 40
    assert post(pushed["scoring_uri"], body, {"Authorization": f"Bearer {old}"})[0] == 401
    assert post(pushed["scoring_uri"], body, {"Authorization": f"Bearer {new}"})[0] == 200


def test_binding_beyond_loopback_is_a_warning(cli, iris):
    doc = yaml.safe_load(iris.read_text())
    doc["target"]["host"] = "0.0.0.0"
    iris.write_text(yaml.safe_dump(doc))
    result = cli("validate", iris, "--json")
    assert result.exit_code == 0
    assert any("lets other machines reach the endpoint" in w for w in result.json()["warnings"])


def test_sigterm_during_push_rolls_back_exits_130_and_leaves_no_process(iris, state_home):
    import signal
    import subprocess
    import sys
    import time

    score = iris.parent / "src" / "score.py"
    score.write_text(
        score.read_text().replace("def init():", "def init():\n    import time; time.sleep(30)", 1)
    )
    env = {**os.environ, "TDSP_DEPLOY_HOME": str(state_home)}
    push = subprocess.Popen(
        [sys.executable, "-m", "tdsp_deploy", "push", str(iris), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        record = state_home / "endpoints" / "iris" / "endpoint.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"blue"' not in (record.read_text() if record.exists() else ""):
            time.sleep(0.1)  # until the slot exists and the push waits for it to be healthy
        time.sleep(0.5)
        push.send_signal(signal.SIGTERM)
        out, err = push.communicate(timeout=60)
        assert push.returncode == 130, err
        assert json.loads(out)["details"]["rolled_back"] is True
        slots = json.loads(record.read_text())["slots"]
        assert slots == {}  # the half-started slot is gone
    finally:
        if push.poll() is None:
            push.kill()
        subprocess.run(
            [sys.executable, "-m", "tdsp_deploy", "delete", str(iris), "--yes"],
            env=env,
            capture_output=True,
            timeout=60,
        )


def test_a_planted_secret_appears_in_no_output_log_state_file_render_or_package(
    cli, iris, state_home, tmp_path, monkeypatch
):
    """Whatever the tool prints or writes (output, state, logs, package, render) holds no secret."""
    secret = "s3cr3t-7f1e9c2b-PLANTED"
    monkeypatch.setenv("PLANTED_API_TOKEN", secret)
    doc = yaml.safe_load(iris.read_text())
    doc["environment"]["variables"]["API_TOKEN"] = "${PLANTED_API_TOKEN}"
    iris.write_text(yaml.safe_dump(doc))
    outputs = []
    try:
        for command in (
            ["validate", iris],
            ["push", iris],
            ["push", iris, "--json"],
            ["status", iris],
            ["status", iris, "--json"],
            ["logs", iris],
            ["test", iris, "--json"],
            ["package", iris, "-o", tmp_path / "dist"],
            ["render", iris, "-o", tmp_path / "review"],
            ["invoke", iris, "--request", iris.parent / "sample-request.json"],
        ):
            result = cli(*command)
            assert result.exit_code == 0, (command, result.stderr)
            outputs.append(result.stdout + result.stderr)
        # The supervisor restarts a killed slot with a copy of its environment, secret included:
        # that copy lives in its memory only.
        _kill_and_wait_for_restart(cli, iris)
        for command in (["status", iris, "--json"], ["logs", iris]):
            result = cli(*command)
            outputs.append(result.stdout + result.stderr)
        assert cli("invoke", iris, "--request", iris.parent / "sample-request.json").exit_code == 0
        for text in outputs:
            assert secret not in text
        written = [
            p
            for root in (state_home, tmp_path / "dist", tmp_path / "review")
            for p in root.rglob("*")
            if p.is_file()
        ]
        assert any(p.suffix == ".tar" for p in written) and any(p.name == "local-plan.json" for p in written)
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
        plan = json.loads((tmp_path / "review" / "local-plan.json").read_text())
        assert plan["slot"]["environment"]["API_TOKEN"] == "<redacted>"
    finally:
        cli("delete", iris, "--yes")


def test_killed_processes_are_reported_and_the_next_push_brings_them_back(cli, deployed):
    """As after a machine restart: router, supervisor and slot all gone; the state is still read."""
    import signal

    manifest, pushed = deployed
    status = cli("status", manifest, "--json").json()
    router_pid, slot_pid = status["details"]["router"]["pid"], status["slots"][0]["details"]["pid"]
    supervisor_pid = status["details"]["supervisor"]["pid"]
    for pid in (supervisor_pid, router_pid, slot_pid):  # the supervisor first, or it restarts the slot
        os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)], timeout=10) if psutil.pid_exists(pid) else None
    broken = cli("status", manifest, "--json")
    assert broken.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert broken.json()["details"]["router"]["state"] == "stopped"
    assert broken.json()["details"]["supervisor"]["state"] == "stopped"
    assert broken.json()["slots"][0]["state"] == "stopped"
    healed = cli("push", manifest, "--json")
    assert healed.exit_code == 0, healed.stderr
    assert healed.json()["unchanged"] is True  # same package: only the processes came back
    assert any("restarted the router" in w for w in healed.json()["warnings"])
    assert healed.json()["scoring_uri"] == pushed["scoring_uri"]  # same port, same keys
    key = keys(cli, manifest)["primary_key"]
    body = (manifest.parent / "sample-request.json").read_bytes()
    assert post(pushed["scoring_uri"], body, {"Authorization": f"Bearer {key}"})[0] == 200
    healthy = cli("status", manifest, "--json")
    assert healthy.exit_code == 0
    assert healthy.json()["details"]["supervisor"]["state"] == "running"
    assert healthy.json()["slots"][0]["details"]["port"] == status["slots"][0]["details"]["port"]


def _kill_and_wait_for_restart(cli, manifest: Path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    slot = cli("status", manifest, "--json").json()["slots"][0]["details"]
    group = [psutil.Process(slot["pid"]), *psutil.Process(slot["pid"]).children(recursive=True)]
    os.killpg(slot["pid"], signal.SIGKILL)
    psutil.wait_procs(group, timeout=30)
    deadline = time.monotonic() + 120
    while True:
        now = cli("status", manifest, "--json").json()["slots"][0]
        if now["state"] == "healthy" and now["details"]["restarts"] == 1:
            return
        assert time.monotonic() < deadline, f"not restarted: {now}"
        time.sleep(0.2)
