"""A slot behaves as Azure ML's inference server does, under each ``target.http_server``:
an entry script that cannot start stops the deployment (exit 4) with its cause in one line;
the model folder comes from ``--model_dir`` or else from AZUREML_MODEL_DIR; a ``config.json``
and a ``logging.json`` at the root of the code folder are the server's.

(The version header and its switch, CORS, swagger and streaming are in test_local_layout.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.backends.local.processes import free_port
from tdsp_deploy.errors import ExitCode

pytestmark = pytest.mark.timeout(240)
HTTP_SERVERS = pytest.mark.parametrize("http_server", ["granian", "gunicorn"])

GOOD = "def init():\n    pass\n\n\ndef run(raw_data):\n    return {'ok': True}\n"


def _manifest(root: Path, http_server: str, script: str, **files: str) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("1")
    (root / "src").mkdir()
    (root / "src" / "score.py").write_text(script)
    for name, text in files.items():
        (root / "src" / name.replace("_dot_", ".")).write_text(text)
    (root / "request.json").write_text("{}")
    manifest = root / "deploy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": f"server-{http_server}",
                "model": {"path": "model/", "name": "m", "version": "1"},
                "scoring": {"code": "src/", "script": "score.py"},
                "target": {"kind": "local", "http_server": http_server},
                "smoke_test": {
                    "request": "request.json",
                    "latency": {"requests": 2, "concurrency": 1, "warmup": 0},
                },
            }
        )
    )
    return manifest


def _fails_to_start(cli, manifest: Path) -> dict:  # type: ignore[no-untyped-def]
    try:
        result = cli("push", manifest, "--json")
        assert result.exit_code == ExitCode.DEPLOYMENT_FAILED, result.stderr
        error = result.json()
        # the cause in the message, never a traceback of ours (the log's own tail stays in details)
        assert "Traceback" not in error["message"] + error["hint"]
        assert "tdsp_deploy" not in error["message"] + error["hint"]
        assert "fix the entry script" in error["hint"] and "--failed" in error["hint"]
        assert cli("status", manifest, "--json").json()["slots"] == []  # rolled back
        return error
    finally:
        cli("delete", manifest, "--yes")


@HTTP_SERVERS
def test_init_raising_stops_the_push_with_its_cause(cli, tmp_path, http_server):
    script = "def init():\n    raise RuntimeError('the model file is corrupt')\n\n\ndef run(raw_data):\n    return 1\n"
    error = _fails_to_start(cli, _manifest(tmp_path / "app", http_server, script))
    assert error["message"].endswith(
        "exited during start-up with code 3: init() raised: RuntimeError: the model file is corrupt "
        "(score.py, line 2)"
    ), error["message"]


@HTTP_SERVERS
def test_a_syntax_error_in_an_imported_module_stops_the_push_with_its_place(cli, tmp_path, http_server):
    script = "import helper\n\n\n" + GOOD
    error = _fails_to_start(cli, _manifest(tmp_path / "app", http_server, script, helper_dot_py="def f(:\n"))
    assert re.search(
        r"importing the entry script failed: SyntaxError: .* \(helper\.py, line 1\)$", error["message"]
    ), error["message"]


@HTTP_SERVERS
def test_a_run_the_script_never_defines_stops_the_push(cli, tmp_path, http_server):
    # a star import hides the names from the manifest's own check: only the server can tell
    script = "from helper import *\n\n\ndef init():\n    pass\n"
    error = _fails_to_start(cli, _manifest(tmp_path / "app", http_server, script, helper_dot_py="X = 1\n"))
    assert error["message"].endswith("exited during start-up with code 3: score.py has no run() function")


@HTTP_SERVERS
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("def init(:\n    pass\n", "src/score.py:1: syntax error"),
        ("def init():\n    pass\n", "no top-level function 'run'"),
    ],
)
def test_a_script_that_cannot_work_is_refused_before_anything_starts(
    cli, tmp_path, http_server, script, expected
):
    result = cli("push", _manifest(tmp_path / "app", http_server, script), "--json")
    assert result.exit_code == ExitCode.USAGE and expected in result.json()["message"]
    assert "Traceback" not in result.stderr


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"marked": {"format": "MARKED %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "out": {"class": "logging.StreamHandler", "formatter": "marked", "stream": "ext://sys.stdout"}
    },
    "loggers": {"azmlinfsrv": {"level": "INFO", "handlers": ["out"], "propagate": False}},
}


@HTTP_SERVERS
def test_config_json_and_logging_json_in_the_code_folder_are_the_servers(cli, tmp_path, http_server):
    """As in Azure ML's container, the server reads config.json and logging.json at the root
    of the code folder (AML_APP_ROOT): the config names the service in the swagger document,
    the logging config formats the server's log."""
    root = tmp_path / "app"
    manifest = _manifest(
        root,
        http_server,
        GOOD,
        config_dot_json=json.dumps({"SERVICE_NAME": "configured-service"}),
        logging_dot_json=json.dumps(LOGGING),
    )
    try:
        pushed = cli("push", manifest)
        assert pushed.exit_code == 0, pushed.stderr
        status = cli("status", manifest, "--json").json()
        key = cli("credentials", manifest, "--json").json()["primary_key"]
        swagger_url = status["scoring_uri"].replace("/score", "/swagger.json")
        request = urllib.request.Request(swagger_url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.loads(answer.read())["info"]["title"] == "configured-service"
        log = cli("logs", manifest, "--tail", "2000").stdout
        app_root = Path(status["slots"][0]["details"]["log"]).parent / "azureml-app" / "src"
        assert f"MARKED INFO azmlinfsrv: Loaded logging config from {app_root / 'logging.json'}" in log, log
        assert "MARKED INFO azmlinfsrv.user_script: Users's init has completed successfully" in log
        assert "Found extra keys" not in log
    finally:
        cli("delete", manifest, "--yes")


# -- the server process itself ------------------------------------------------------------------

ECHO_MODEL_DIR = (
    "import os\n\ndef init():\n    pass\n\n\ndef run(raw_data):\n    return os.environ['AZUREML_MODEL_DIR']\n"
)


def _model_dir_seen(tmp: Path, http_server: str, *, option: str | None, variable: str | None) -> str:
    """Start the slot process as the CLI does, with the model folder given by ``--model_dir``,
    by AZUREML_MODEL_DIR, or both, and ask its script which one it got."""
    code = tmp / "code"
    code.mkdir()
    (code / "score.py").write_text(ECHO_MODEL_DIR)
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("SERVER_PORT", "WORKER_COUNT", "AZUREML_MODEL_DIR")
    }
    env.update({"AML_APP_ROOT": str(code), "PYTHONUNBUFFERED": "1"})
    if variable is not None:
        env["AZUREML_MODEL_DIR"] = variable
    command = [sys.executable, "-m", "tdsp_deploy.backends.local.slot_server", "--entry_script", "score.py"]
    if option is not None:
        command += ["--model_dir", option]
    command += ["--port", str(port), "--http_server", http_server]
    with open(tmp / "slot.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp / "slot.log").read_text()
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/score", data=b"{}", headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return json.loads(answer.read())
            except OSError:
                time.sleep(0.2)
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


@HTTP_SERVERS
def test_the_model_folder_comes_from_the_option_else_from_the_environment(tmp_path, http_server):
    """azmlinfsrv's rule: ``--model_dir`` when given (it wins over the variable), else
    AZUREML_MODEL_DIR as the environment has it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _model_dir_seen(tmp_path / "a", http_server, option=None, variable="/from/the/environment") == (
        "/from/the/environment"
    )
    assert _model_dir_seen(tmp_path / "b", http_server, option="/from/the/option", variable="/from/env") == (
        "/from/the/option"
    )
