"""A deployment on the local target sees what it would see in Azure ML's container: the model
under ``azureml-models/<model name>/<version>/``, the manifest's variables and the platform's,
nothing of the CLI's own environment; and its log holds no error when all is well."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

SCRIPT = """\
import json, os

def init():
    global seen
    root = os.environ["AZUREML_MODEL_DIR"]
    seen = {
        "model_dir": root,
        "beneath": sorted(os.listdir(root)),
        "weights": open(os.path.join(root, "model", "weights.txt")).read(),
        "variables": sorted(os.environ),
        "greeting": os.environ.get("GREETING"),
        "cwd": os.getcwd(),
        "app_root": os.environ.get("AML_APP_ROOT"),
        "entry_script": os.environ.get("AZUREML_ENTRY_SCRIPT"),
        "file": __file__,
        "sibling": __import__("helper").WHAT,  # a module beside the script imports, as on Azure ML
        "opened": open("notes.txt").read(),  # relative to the working directory: the code folder
    }
    print("init printed this")

def run(raw_data):
    print("run printed this")
    # objects the worker held once init() had run, which the garbage collector no longer walks
    return {**seen, "frozen_after_init": __import__("gc").get_freeze_count()}
"""


def _manifest(root: Path, *, http_server: str, version: str | None = "3") -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("0.5 0.25")
    (root / "src").mkdir()
    (root / "src" / "score.py").write_text(SCRIPT)
    (root / "src" / "helper.py").write_text("WHAT = 'beside the script'\n")
    (root / "src" / "notes.txt").write_text("in the code folder")
    (root / "request.json").write_text("{}")
    model = {"path": "model/", "name": "iris-model"}
    if version:
        model["version"] = version
    manifest = root / "deploy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": f"layout-{http_server}",
                "model": model,
                "scoring": {"code": "src/", "script": "score.py"},
                "environment": {"variables": {"GREETING": "hello"}},
                "target": {"kind": "local", "http_server": http_server},
                "smoke_test": {
                    "request": "request.json",
                    "latency": {"requests": 2, "concurrency": 1, "warmup": 0},
                },
            }
        )
    )
    return manifest


@pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
def test_the_deployment_sees_azure_mls_layout_and_none_of_the_clis_environment(
    cli, tmp_path, monkeypatch, http_server
):
    # what a developer's shell or a CI job typically holds, and no deployment may see
    monkeypatch.setenv("SQL_PASSWORD", "hunter2-planted")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "planted-client-secret")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "00000000-planted")
    manifest = _manifest(tmp_path / "app", http_server=http_server)
    try:
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        seen = cli("invoke", manifest, "--request", tmp_path / "app" / "request.json", "--json").json()[
            "response"
        ]
        assert re.search(r"/azureml-models/iris-model/3$", seen["model_dir"]), seen["model_dir"]
        assert seen["beneath"] == ["model"] and seen["weights"] == "0.5 0.25"
        assert seen["greeting"] == "hello"
        for planted in ("SQL_PASSWORD", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID", "TDSP_DEPLOY_HOME"):
            assert planted not in seen["variables"]
        assert {"AZUREML_MODEL_DIR", "AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT", "PATH"} <= set(seen["variables"])
        # Azure ML's container: /var/azureml-app/<code folder>/ holds the code and is AML_APP_ROOT
        # and the working directory; the model sits beside it in azureml-models/<name>/<version>/;
        # the server makes AZUREML_ENTRY_SCRIPT (the script's name in AML_APP_ROOT) absolute
        app_root = Path(seen["app_root"])
        assert app_root.parts[-2:] == ("azureml-app", "src"), app_root
        assert seen["cwd"] == seen["app_root"]
        assert Path(seen["model_dir"]) == app_root.parent / "azureml-models" / "iris-model" / "3"
        assert seen["entry_script"] == seen["file"] == str(app_root / "score.py")
        assert seen["sibling"] == "beside the script" and seen["opened"] == "in the code folder"
        # the worker set aside what init() left (the modules, the model) before serving: a full
        # collection no longer walks it (BENCHMARKS.md, "Serving: the slot's share")
        assert seen["frozen_after_init"] > 10_000, seen["frozen_after_init"]

        # status: the deployment's environment (here the CLI's own, "shared") and its Python
        details = cli("status", manifest, "--json").json()["slots"][0]["details"]
        assert details["environment"]["hash"] == "shared" and details["environment"]["python"].startswith(
            "3."
        )
        assert f"shared py{details['environment']['python']}" in cli("status", manifest).stderr

        log = cli("logs", manifest, "--tail", "1000").stdout
        assert " E " not in log and " W " not in log and "Traceback" not in log, log
        assert "Found extra keys" not in log and "Error while fetching model IDs" not in log
        # the log begins as azmlinfsrv's does on Azure ML: its settings and routes
        assert f"Entry Script Name: {app_root / 'score.py'}" in log and "Server Routes" in log, log
        assert f"Model Directory: {seen['model_dir']}" in log
        # print() in init() and in run() reaches the log, once each
        assert log.count("init printed this") == 1, log
        assert log.count("run printed this") >= 1
    finally:
        cli("delete", manifest, "--yes")


def test_a_version_from_the_content_hash_is_laid_out_as_version_1(cli, tmp_path):
    manifest = _manifest(tmp_path / "app", http_server="granian", version=None)
    try:
        assert cli("push", manifest).exit_code == 0
        answer = cli("invoke", manifest, "--request", tmp_path / "app" / "request.json", "--json").json()
        assert "/azureml-models/iris-model/1" in json.dumps(answer)
        log = cli("logs", manifest, "--tail", "1000").stdout
        assert "Error while fetching model IDs" not in log
    finally:
        cli("delete", manifest, "--yes")


@pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
def test_a_scoring_folder_that_is_a_package_deploys(cli, tmp_path, http_server):
    """A scoring folder with an __init__.py made every push under granian crash-loop with
    "Could not import 'code.tdsp_deploy.backends.local.slot_app'"."""
    manifest = _manifest(tmp_path / "app", http_server=http_server)
    (tmp_path / "app" / "src" / "__init__.py").write_text("")
    try:
        pushed = cli("push", manifest)
        assert pushed.exit_code == 0, pushed.stderr
    finally:
        cli("delete", manifest, "--yes")


STREAMING_SCRIPT = """\
import time
from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

def init():
    pass

@rawhttp
def run(request):
    def chunks():
        for i in range(3):
            yield f"chunk {i}\\n"
            time.sleep(1)
    return AMLResponse(chunks(), 200)
"""


def _endpoint(cli, manifest: Path) -> tuple[int, str]:
    """The endpoint's port and a scoring key: a slot answers only the router, so the slot's
    behaviour is observed as a caller sees it, through the router."""
    from urllib.parse import urlsplit

    status = cli("status", manifest, "--json").json()
    key = cli("credentials", manifest, "--json").json()["primary_key"]
    return int(urlsplit(status["scoring_uri"]).port), key


def _first_chunk(port: int, key: str, headers: str = "") -> tuple[float, float, bytes]:
    """Seconds to the first body bytes and to the whole answer, and the head, through the
    endpoint (the slot streams, the router relays as it comes)."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: endpoint\r\nContent-Length: 2\r\n"
            + f"Authorization: Bearer {key}\r\n{headers}".encode()
            + b"Content-Type: application/json\r\n\r\n{}"
        )
        data, first = b"", None
        while b"chunk 2" not in data:
            received = sock.recv(65536)
            if not received:
                break
            data += received
            if first is None and b"chunk 0" in data:
                first = time.monotonic() - started
        return first or 99.0, time.monotonic() - started, data.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
def test_the_slot_behaves_as_azure_mls_server(cli, tmp_path, http_server):
    """Under either HTTP server: a generator answer (@rawhttp, AMLResponse(generator)) is sent
    chunked as it is produced; the version header is sent unless switched off; CORS answers
    the configured origins; swagger is served."""
    root = tmp_path / "app"
    manifest = _manifest(root, http_server=http_server)
    (root / "src" / "score.py").write_text(STREAMING_SCRIPT)
    doc = yaml.safe_load(manifest.read_text())
    doc["environment"]["variables"].update({"AML_CORS_ORIGINS": "https://app.example"})
    del doc["smoke_test"]
    manifest.write_text(yaml.safe_dump(doc))
    try:
        assert cli("push", manifest).exit_code == 0
        port, key = _endpoint(cli, manifest)
        first, whole, head = _first_chunk(port, key, "Origin: https://app.example\r\n")
        assert first < 0.9 < whole, (first, whole)  # the first chunk before the generator ends
        lowered = head.lower()
        assert b"transfer-encoding: chunked" in lowered and b"content-length" not in lowered
        assert b"x-ms-server-version: azmlinfsrv/" in lowered
        assert b"access-control-allow-origin: https://app.example" in lowered

        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/swagger.json", headers={"Authorization": f"Bearer {key}"})
        swagger = connection.getresponse()
        document = json.loads(swagger.read())
        connection.close()
        assert swagger.status == 200 and document["swagger"] == "2.0"  # the server's template
        assert "/score" in document["paths"]

        # the switch: SERVER_VERSION_LOG_RESPONSE_ENABLED=false drops the version header
        doc["environment"]["variables"]["SERVER_VERSION_LOG_RESPONSE_ENABLED"] = "false"
        manifest.write_text(yaml.safe_dump(doc))
        assert cli("push", manifest).exit_code == 0
        _, _, head = _first_chunk(*_endpoint(cli, manifest))
        assert b"x-ms-server-version" not in head.lower()
    finally:
        cli("delete", manifest, "--yes")


def test_the_package_is_laid_out_as_the_container_and_a_restart_keeps_the_layout(tmp_path):
    """<revision>/azureml-app/<code folder>/ and azureml-models/<name>/<version>/ hold the real
    files; the package keeps links to them, through which its lock still reads every file. A
    script in a subfolder makes that subfolder AML_APP_ROOT (as ``az ml ... --local`` does)."""
    from tdsp_deploy.backends.local import container

    revision = tmp_path / "r1"
    (revision / "package" / "code" / "sub").mkdir(parents=True)
    (revision / "package" / "code" / "sub" / "score.py").write_text("def init(): pass\n")
    (revision / "package" / "model" / "model").mkdir(parents=True)
    (revision / "package" / "model" / "model" / "w.txt").write_text("1")

    layout = container.lay_out(revision, "onlinescoring", "sub/score.py", "m", "7")
    app = revision / "azureml-app"
    assert layout == container.Layout(
        app / "onlinescoring" / "sub", "score.py", app / "azureml-models" / "m" / "7"
    )
    assert layout.variables() == {
        "AML_APP_ROOT": str(app / "onlinescoring" / "sub"),
        "AZUREML_ENTRY_SCRIPT": "score.py",
        "AZUREML_MODEL_DIR": str(app / "azureml-models" / "m" / "7"),
    }
    assert not (app / "onlinescoring").is_symlink() and (app / "onlinescoring" / "sub" / "score.py").is_file()
    assert (layout.model_dir / "model" / "w.txt").read_text() == "1"
    assert (revision / "package" / "code").is_symlink()
    assert (revision / "package" / "code" / "sub" / "score.py").read_text() == "def init(): pass\n"

    # again (a restart, by a CLI whose manifest now names the folder otherwise): the same
    again = container.lay_out(revision, "renamed", "sub/score.py", "m", "7")
    assert again == layout
    # the supervisor restarts a process in the AML_APP_ROOT it copied from the live one
    assert container.app_root_of(revision, layout.variables()) == layout.app_root
    assert container.app_root_of(revision, {}) == revision / "package" / "code"  # an older revision


@pytest.mark.parametrize(
    ("code", "expected"), [("onlinescoring", "onlinescoring"), (None, "code"), ("azureml-models", "code")]
)
def test_the_code_folder_keeps_its_name_unless_it_would_clash(tmp_path, code, expected):
    from tdsp_deploy.backends.local import container

    path = None
    if code is not None:
        path = tmp_path / code
        path.mkdir()
    assert container.code_folder_name(path) == expected
