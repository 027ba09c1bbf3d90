"""The SQL Server target through the real driver: mssql-python and its bundled ODBC driver
talk TDS to tests/tds/responder.py on loopback, which hands each statement to the fake SQL
Server (tests/sqlserver_fake.py) and sends its answers and refusals back as SQL Server does.

Connect, bind (qmark parameters become sp_prepexec with typed parameters; the model's bytes
go as varbinary(max)), read results and read errors all run in the real driver here.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlserver_fake import FakeSqlServer
from test_sqlserver_backend import make_project, matching_libraries

from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.errors import BackendError, ExitCode

pytest.importorskip("mssql_python")
from tds.responder import SP_PREPEXEC, Responder  # noqa: E402

PASSWORD = "Xq7;{Pz55}kv"
PASSWORD_ENV = "TDSP_TEST_SQL_PASSWORD"


@pytest.fixture
def server() -> FakeSqlServer:
    return FakeSqlServer(libraries=matching_libraries())


@pytest.fixture
def responder(server: FakeSqlServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with Responder(server, password=PASSWORD) as listening:
        yield listening


def on_the_wire(manifest: Path, port: int) -> Path:
    """The manifest aimed at the responder (no TLS: it answers ENCRYPT_NOT_SUP)."""
    document = yaml.safe_load(manifest.read_text())
    document["target"].update(server="127.0.0.1", port=port, encrypt=False)
    manifest.write_text(yaml.safe_dump(document))
    return manifest


def batches(responder: Responder) -> list[str]:
    """The text of every statement that arrived: SQL batches and sp_prepexec statements."""
    found = []
    for kind, what in responder.requests:
        if kind == "batch":
            found.append(what)
        elif kind == "rpc" and what[0] == SP_PREPEXEC:
            found.append(what[1][2])
    return found


def tags(responder: Responder) -> list[str]:
    return [text.split("\n", 1)[0].removeprefix("-- tdsp-deploy: ") for text in batches(responder)]


def test_a_push_runs_every_step_through_the_real_driver(cli, tmp_path, server, responder):
    manifest = on_the_wire(make_project(tmp_path / "project"), responder.port)

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    result = pushed.json()
    assert result["traffic"] == {"blue": 100}
    sent = tags(responder)
    for step in (
        "get_applock",  # the endpoint lock
        "probe_configuration",
        "probe_python",
        "create_model_table",
        "create_traffic_table",
        "insert_model",  # the model's bytes as a bound varbinary(max)
        "bind_model_name",
        "assign_slot",
        "set_weight",  # traffic
        "refresh_active",
        "release_applock",
    ):
        assert step in sent, step
    texts = batches(responder)
    assert any(t.startswith("CREATE OR ALTER PROCEDURE") for t in texts)  # the procedures, as batches
    scoring = [t for t in texts if "EXEC [dbo].[score_irissql]" in t]
    assert len(scoring) >= 2  # the health probe (no rows) and the smoke calls
    payload = server.db.tables["dbo.tdsp_models"][0]["payload"]
    assert payload == (tmp_path / "project" / "model" / "model.pkl").read_bytes()
    assert ("transaction", 7) in responder.requests  # commits, as the driver sends them
    logins = [what for kind, what in responder.requests if kind == "login"]
    assert logins and all(login["app"] == "MSSQL-Python" for login in logins)

    invoked = cli("invoke", manifest, "--request", tmp_path / "project" / "request.json", "--json")
    assert invoked.exit_code == 0, invoked.stdout + invoked.stderr
    expected = json.loads((tmp_path / "project" / "expected.json").read_text())
    assert invoked.json()["response"] == expected


class Exploding:
    """A model whose predict() has a bug (unpickled inside the server's Python)."""

    def predict(self, features: Any) -> Any:
        return len(features) / 0


def test_a_model_raising_inside_the_server_shows_its_traceback_and_exits_4(cli, tmp_path, server, responder):
    project = make_project(tmp_path / "project")
    (tmp_path / "project" / "model" / "model.pkl").write_bytes(pickle.dumps(Exploding()))
    manifest = on_the_wire(project, responder.port)

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == ExitCode.DEPLOYMENT_FAILED, pushed.stdout + pushed.stderr
    error = pushed.json()
    assert "ZeroDivisionError: division by zero" in error["message"], error
    assert "Traceback (most recent call last)" in error["message"]
    assert "return len(features) / 0" in error["message"]


def test_a_wrong_password_is_a_refused_login_exit_3(tmp_path, server, responder, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    target = SqlServerTarget.model_validate(
        {
            "kind": "sqlserver",
            "server": "127.0.0.1",
            "port": responder.port,
            "encrypt": False,
            "database": "scoring",
            "auth": {"method": "sql", "username": "deployer", "password_env": PASSWORD_ENV},
            "inputs": [{"name": "x", "type": "float"}],
            "outputs": [{"name": "y", "type": "float"}],
        }
    )
    with pytest.raises(BackendError) as refused:
        SqlServerConnection.connect(target)
    assert refused.value.exit_code == ExitCode.BACKEND
    assert "refused the login" in refused.value.message
    assert "not-the-password" not in refused.value.message
