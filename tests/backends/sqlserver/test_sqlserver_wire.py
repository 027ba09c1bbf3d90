"""The SQL Server target through the real driver: mssql-python and its bundled ODBC driver
talk TDS to tests/fakes/tds/responder.py on loopback, which hands each statement to the fake SQL
Server (tests/fakes/sqlserver_fake.py) and sends its answers and refusals back as SQL Server does.

Connect, bind (qmark parameters become sp_prepexec with typed parameters; the model's bytes
go as varbinary(max)), read results and read errors all run in the real driver here.
"""

from __future__ import annotations

import json
import pickle
import time
from typing import Any

import pytest
import yaml

from tdsp_deploy.backends.sql.errors import TSQL_REFUSALS, translate_error
from tdsp_deploy.backends.sql.requests import scoring_call
from tdsp_deploy.backends.sqlserver import SqlServerBackend, input_rows
from tdsp_deploy.backends.sqlserver.applock import GET_APPLOCK
from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, ExitCode
from tests.fakes.dbapi_fake import server_error
from tests.fakes.sql_wire import SQL_PASSWORD, SQL_PASSWORD_ENV, on_the_wire
from tests.fakes.sqlserver_fake import FakeSqlServer
from tests.fakes.sqlserver_project import make_project, matching_libraries

pytest.importorskip("mssql_python")
from tests.fakes.tds.responder import SP_PREPEXEC, Responder  # noqa: E402

PASSWORD, PASSWORD_ENV = SQL_PASSWORD, SQL_PASSWORD_ENV


@pytest.fixture
def server() -> FakeSqlServer:
    return FakeSqlServer(libraries=matching_libraries())


@pytest.fixture
def responder(server: FakeSqlServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with Responder(server, password=PASSWORD) as listening:
        yield listening
    assert listening.failures == []


def wire_target(port: int, *, encrypt: bool = False) -> SqlServerTarget:
    """A one-column target on the responder's port, signing in with the test password."""
    return SqlServerTarget.model_validate(
        {
            "kind": "sqlserver",
            "server": "127.0.0.1",
            "port": port,
            "encrypt": encrypt,
            "database": "scoring",
            "auth": {"method": "sql", "username": "deployer", "password_env": PASSWORD_ENV},
            "inputs": [{"name": "x", "type": "float"}],
            "outputs": [{"name": "y", "type": "float"}],
        }
    )


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
    # SQL Server 2022+ ship no Python: the pre-flight names the runtime beside the libraries
    versions = matching_libraries()
    assert (
        f"the server runs Python {server.python} with scikit-learn {versions['scikit-learn']}, "
        f"numpy {versions['numpy']}" in pushed.stderr
    )
    sent = tags(responder)
    for step in (
        "get_applock",  # the endpoint lock
        "probe_configuration",
        "probe_python",
        "create_model_table",
        "create_traffic_table",
        "insert_model",  # the model's bytes as a bound varbinary(max)
        "probe_schema",  # the check for an earlier schema (migrate.py)
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
    # no None reached the driver: it would have asked the server to describe the statement first
    assert not [what for kind, what in responder.requests if kind == "rpc" and isinstance(what[0], str)]
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
    target = wire_target(responder.port)
    with pytest.raises(BackendError) as refused:
        SqlServerConnection.connect(target)
    assert refused.value.exit_code == ExitCode.BACKEND
    assert "refused the login" in refused.value.message
    assert "not-the-password" not in refused.value.message


def test_a_throw_of_the_procedure_keeps_its_identity_through_the_driver(cli, tmp_path, server, responder):
    """THROW 50003 (no slot answers) comes back as mssql-python words it: no number, one record.
    Before: a generic 'SQL Server said no' (exit 3) instead of the deployment's own refusal."""
    manifest = on_the_wire(make_project(tmp_path / "project"), responder.port)
    assert cli("push", manifest, "--json").exit_code == 0
    target = SqlServerTarget.model_validate(yaml.safe_load(manifest.read_text())["target"])
    connection = SqlServerConnection.connect(target)
    rows = input_rows(target, [[5.1, 3.5, 1.4, 0.2]])
    sql, params = scoring_call("[dbo].[score_irissql]", SqlServerBackend.INPUT_ARGUMENT, rows, "purple", None)

    with pytest.raises(DeploymentFailed) as refused:
        connection.query(sql, params, doing="score")
    connection.close()

    assert refused.value.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "tdsp-50003" in refused.value.message and refused.value.hint == TSQL_REFUSALS[50003]


def test_closing_ends_the_session_and_its_endpoint_lock(server, responder):
    """Before: mssql-python pooled the session; close() kept it open with the lock held."""
    target = wire_target(responder.port)
    connection = SqlServerConnection.connect(target)
    assert connection.execute(GET_APPLOCK, ("tdsp-deploy:scoring:ep", 0)) == [(0,)]
    assert "tdsp-deploy:scoring:ep" in server.app_locks
    connection.close()  # no release: the session's end must let the lock go
    deadline = time.monotonic() + 5
    while server.app_locks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app_locks == {}


class RowsThenError(FakeSqlServer):
    """A batch that answers a result set and then fails in a later statement (a request-log
    INSERT refused after the scores were sent), as SQL Server streams them."""

    def run(self, sql: str, params: tuple[Any, ...], session: Any = None) -> Any:
        if sql.startswith("-- test: rows then error"):
            error = server_error(8152, "String or binary data would be truncated.", state="22001")
            error.after_rows = (["y"], [(1.0,)])  # type: ignore[attr-defined]
            raise error
        return super().run(sql, params, session)


def test_an_error_after_the_first_result_set_is_read_before_commit(monkeypatch):
    """Before: the first result set was returned and committed; the driver dropped the later
    error at commit, and the failed INSERT's transaction was committed as if it had worked."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    server = RowsThenError()
    with Responder(server, password=PASSWORD) as responder:
        target = wire_target(responder.port)
        connection = SqlServerConnection.connect(target)
        with pytest.raises(BackendError, match="truncated"):
            connection.execute("-- test: rows then error\nSELECT 1.0 AS [y]; INSERT INTO [t] VALUES (1);")
        connection.close()
    after = responder.requests[
        responder.requests.index(
            ("batch", "-- test: rows then error\nSELECT 1.0 AS [y]; INSERT INTO [t] VALUES (1);")
        )
        + 1 :
    ]
    assert ("transaction", 7) not in after and ("transaction", 8) in after


def test_a_server_without_encryption_is_named_as_such(server, responder):
    """The responder offers no TLS (ENCRYPT_NOT_SUP): with encrypt on, the driver refuses it."""
    target = wire_target(responder.port, encrypt=True)
    with pytest.raises(BackendError) as refused:
        SqlServerConnection.connect(target)
    assert refused.value.exit_code == ExitCode.BACKEND
    assert "TLS handshake" in refused.value.message and "encrypt" in (refused.value.hint or "")


class ScriptErrorOutsideTheGuard(FakeSqlServer):
    """sp_execute_external_script failing as SQL Server reports it: 39004, then 39019 with
    the script's message, then its STDERR as an informational message."""

    def run(self, sql: str, params: tuple[Any, ...], session: Any = None) -> Any:
        if sql.startswith("-- test: external script error"):
            raise server_error(
                39004,
                "A 'Python' script error occurred during execution of 'sp_execute_external_script' "
                "with HRESULT 0x80004004.\nSTDERR message(s) from external script:\n"
                "Traceback (most recent call last):\nValueError: the reason, in a later record",
            )
        return super().run(sql, params, session)


def test_the_driver_keeps_only_the_first_of_several_records(monkeypatch):
    """Why the generated script THROWs its own traceback: of 39004, 39019 and STDERR, what
    mssql-python raises holds the first record only, and the cursor keeps no other."""
    import mssql_python

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with Responder(ScriptErrorOutsideTheGuard(), password=PASSWORD) as responder:
        connection = mssql_python.connect(
            f"Server=tcp:127.0.0.1,{responder.port};Database=scoring;Encrypt=no;UID=u;PWD={{"
            + PASSWORD.replace("}", "}}")
            + "}",
            timeout=5,
        )
        cursor = connection.cursor()
        with pytest.raises(mssql_python.ProgrammingError) as raised:
            cursor.execute(
                "-- test: external script error\nEXEC sp_execute_external_script @language = N'Python';"
            )
        assert "HRESULT 0x80004004" in str(raised.value)
        assert "the reason, in a later record" not in str(raised.value) and cursor.messages == []
        connection.close()
        assert responder.failures == []
    error = translate_error(raised.value, "score")
    assert type(error) is DeploymentFailed and "failed inside SQL Server" in error.message


def test_a_database_of_the_earlier_version_is_migrated_through_the_real_driver(cli, tmp_path, monkeypatch):
    """The migration's batches (dynamic SQL with quotes inside quotes, the primary keys looked
    up by name) go through mssql-python as they would to SQL Server."""
    from tests.fakes.sqlserver_earlier import ENDPOINT, MODEL, earlier_database

    earlier, _ = earlier_database(tmp_path)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with Responder(earlier, password=PASSWORD) as listening:
        manifest = on_the_wire(make_project(tmp_path / "v2", version="2", max_depth=1), listening.port)
        pushed = cli("push", manifest, "--json")
        sent = tags(listening)
    assert listening.failures == []

    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    assert sent.index("probe_schema") < sent.index("migrate_tables") < sent.index("bound_procedures")
    assert sent.count("unbind_model_name") == 2  # both procedures of the endpoint
    models = [(r["endpoint"], r["name"], r["version"]) for r in earlier.db.tables["dbo.tdsp_models"]]
    assert models == [(ENDPOINT, MODEL, "1"), (ENDPOINT, MODEL, "2")]
    assert {r["slot"]: r["weight"] for r in earlier.db.tables["dbo.tdsp_traffic"]} == {"blue": 0, "green": 100}
    assert earlier.db.bindings == {}
