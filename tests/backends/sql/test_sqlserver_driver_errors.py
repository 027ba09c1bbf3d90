"""What the SQL Server seam reads from the driver, as mssql-python really gives it.

Every driver error here is built with mssql-python's own exception classes from its own
SQLSTATE table (tests/dbapi_fake.server_error): ``Driver Error: <SQLSTATE words>; DDBC Error:
[Microsoft][SQL Server]<message>``, one diagnostic record, no native error number. A
translation that reads something the driver never gives (a ``(50003)`` suffix, a second
record) fails these tests.
"""

from __future__ import annotations

import re
import types
from typing import Any

import pytest

from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sql.connection import bind_nulls
from tdsp_deploy.backends.sql.errors import (
    SCORING_FAILED,
    SCRIPT_FAILED,
    TSQL_REFUSALS,
    sqlstate,
    translate_error,
)
from tdsp_deploy.backends.sql.requests import scoring_call
from tdsp_deploy.backends.sqlserver import SqlServerBackend, input_rows, request_rows, tsql
from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.backends.synapse import predict_tsql
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, ExitCode
from tests.fakes.dbapi_fake import install_driver, server_error
from tests.fakes.sqlserver_fake import FakeSqlServer

mssql_python = pytest.importorskip("mssql_python")

TARGET = SqlServerTarget.model_validate(
    {
        "kind": "sqlserver",
        "server": "127.0.0.1",
        "database": "scoring",
        "auth": {"method": "sql", "username": "deployer", "password_env": "TDSP_TEST_DE_PASSWORD"},
        "inputs": [{"name": "x", "type": "float"}, {"name": "k", "type": "nvarchar(20)"}],
        "outputs": [{"name": "y", "type": "float"}],
    }
)


POOL = SynapseTarget.model_validate(
    {
        "kind": "synapse",
        "workspace": "ws",
        "mode": "sql",
        "server": "ws.sql.azuresynapse.net",
        "database": "pool",
        "auth": {"method": "entra"},
        "inputs": [{"name": "x", "type": "float"}],
        "outputs": [{"name": "y", "type": "float"}],
    }
)


def generated_throws() -> dict[int, str]:
    """Every THROW of the generated T-SQL: number -> the message it sends."""
    manifest = types.SimpleNamespace(name="ep")
    text = "\n".join(
        [
            tsql.insert_model(TARGET),
            sql_rows.assign_slot(tsql.tables(TARGET)),
            sql_rows.set_weight(tsql.tables(TARGET)),
            sql_rows.refresh_active(tsql.tables(TARGET)),
            tsql.create_or_alter_procedure(TARGET, manifest, "pass"),
            # the pool's THROWs are in the same table: one number, one meaning
            predict_tsql.insert_model(POOL),
            predict_tsql.alter_procedure(POOL, "ep", POOL.outputs),
        ]
    )
    found = [
        (int(n), m.replace("''", "'")) for n, m in re.findall(r"THROW (\d+), N'((?:[^']|'')*)', 1;", text)
    ]
    # one number, one meaning, whichever target THROWs it (50004 once meant two things)
    for number, message in found:
        assert message == dict(found)[number], (number, message, dict(found)[number])
    return dict(found)


def test_every_throw_of_the_generated_tsql_keeps_its_identity():
    """Before: matched on '(50003)', which mssql-python never writes: a generic 'said no', exit 3."""
    throws = generated_throws()
    # the two that re-throw an engine's own message (a model's traceback, PREDICT's failure)
    assert set(throws) | {SCRIPT_FAILED, SCORING_FAILED} == set(TSQL_REFUSALS)
    for number, message in throws.items():
        exc = server_error(number, message)
        assert type(exc) is mssql_python.ProgrammingError and "(5" not in str(exc)
        error = translate_error(exc, "push")
        assert type(error) is DeploymentFailed, (number, error)
        assert error.exit_code == ExitCode.DEPLOYMENT_FAILED and error.hint == TSQL_REFUSALS[number]
        assert message.split(": ", 1)[1] in error.message


def test_sqlstate_is_read_back_from_the_driver_words():
    assert sqlstate(server_error(18456, "Login failed for user 'deployer'.")) == "28000"
    assert sqlstate(server_error(208, "Invalid object name 'x'.")) == "42S02"
    unreachable = mssql_python.exceptions.sqlstate_to_exception(
        "08001", "[Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: Error code 0x2749"
    )
    assert sqlstate(unreachable) == "08001"
    error = translate_error(unreachable, "connect")
    assert type(error) is BackendError and "could not be reached" in error.message
    login = translate_error(server_error(18456, "Login failed for user 'deployer'."), "connect")
    assert "refused the login" in login.message


def test_a_failing_model_shows_its_traceback_with_exit_4():
    """Before: only 39004's 'HRESULT 0x80004004' reached the caller; the traceback was in a
    later record the driver drops. Now the procedure THROWs the traceback itself."""
    server = FakeSqlServer()
    connection = SqlServerConnection(server.connect())
    procedure = tsql.create_or_alter_procedure(TARGET, types.SimpleNamespace(name="ep"), "pass")
    assert (
        f"THROW {SCRIPT_FAILED}, @thrown, 1;" in procedure
        and "@script_error = @script_error OUTPUT" in procedure
    )
    traceback = (
        'Traceback (most recent call last):\n  File "score.py", line 3\nZeroDivisionError: division by zero'
    )
    exc = server_error(SCRIPT_FAILED, f"tdsp-{SCRIPT_FAILED}: the model failed:\n{traceback}")
    error = translate_error(exc, "smoke test")
    assert type(error) is DeploymentFailed and error.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert (
        "ZeroDivisionError: division by zero" in error.message and 'File "score.py", line 3' in error.message
    )
    connection.close()


class _Cursor:
    """A DB-API cursor whose batch sends a result set and then an error (the driver raises it
    from nextset(), as mssql-python does when SQLMoreResults fails)."""

    def __init__(self, log: list[str]):
        self.log = log
        self.description = [("y", None, None, None, None, None, None)]

    def execute(self, sql: str, params: Any = ()) -> None:
        self.log.append("execute")

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [(1.0,)]

    def nextset(self) -> bool:
        raise server_error(8152, "String or binary data would be truncated.", state="22001")

    def close(self) -> None:
        pass


class _Connection:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.autocommit = True

    def cursor(self) -> _Cursor:
        return _Cursor(self.log)

    def commit(self) -> None:
        self.log.append("commit")

    def rollback(self) -> None:
        self.log.append("rollback")


def test_an_error_after_the_first_result_set_is_not_committed_away():
    """Before: the first result set was returned and committed; the later error (a failing
    request-log INSERT) was dropped by the driver at commit."""
    raw = _Connection()
    connection = SqlServerConnection(raw)
    with pytest.raises(BackendError, match="truncated"):
        connection.execute("EXEC p")
    assert "commit" not in raw.log and raw.log[-1] == "rollback"


def test_no_none_reaches_the_driver():
    """Before: a None parameter made mssql-python describe the statement on the server first."""
    sql, params = scoring_call("[dbo].[score_ep]", SqlServerBackend.INPUT_ARGUMENT, input_rows(TARGET, [[1.5, None]]), None, None)
    assert None in params
    bound_sql, bound = bind_nulls(sql, params)
    assert None not in bound and bound == [1.5]
    assert "CAST(NULL AS nvarchar(20))" in bound_sql and "@slot = NULL, @request_id = NULL" in bound_sql
    server = FakeSqlServer()
    connection = SqlServerConnection(server.connect())
    connection.execute(tsql.create_traffic_table(TARGET))
    connection.execute(sql_rows.set_salt(tsql.tables(TARGET)), ("m", None))
    assert server.executed_params[-1] == ("m",) and "@salt nvarchar(64) = NULL;" in server.statements[-1]
    text, values = bind_nulls("SELECT N'?', ? -- ?\n, [a?], ?", ["x", None])
    assert text == "SELECT N'?', ? -- ?\n, [a?], NULL" and values == ["x"]


@pytest.mark.parametrize("cell", [[1, 2], {"a": 1}, 2**63, -(2**63) - 1, float("nan")])
def test_cells_the_driver_cannot_bind_are_a_400(cell):
    """Before: lists, objects and integers beyond bigint reached the driver, which raises
    TypeError/ValueError: an unexpected crash, not a 400."""
    body = '{"columns": ["x", "k"], "data": [[%s, "a"]]}' % (
        repr(cell) if not isinstance(cell, float) else "NaN"
    )
    body = body.replace("'", '"')
    with pytest.raises(ValueError, match=r"data\[0\], column x"):
        request_rows(body.encode(), TARGET.inputs)
    assert request_rows(b'{"columns": ["x", "k"], "data": [[9223372036854775807, null]]}', TARGET.inputs)


def test_sessions_are_not_pooled(monkeypatch):
    """Before: mssql-python pooled the session, so the endpoint's application lock outlived
    close() until the pooled session was reused or the process ended."""
    server = FakeSqlServer()
    install_driver(monkeypatch, server.connect, "TDSP_TEST_DE_PASSWORD")
    import sys

    module = sys.modules["mssql_python"]
    SqlServerConnection.connect(TARGET).close()
    assert module.pooled is False


def test_a_dead_connection_is_reported_when_autocommit_is_set():
    """Before: contextlib.suppress hid it, and the first statement failed later, elsewhere."""

    class Dead:
        @property
        def autocommit(self) -> bool:
            return False

        @autocommit.setter
        def autocommit(self, value: bool) -> None:
            raise mssql_python.exceptions.sqlstate_to_exception(
                "08S01", "[Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: Error code 0x68"
            )

    with pytest.raises(BackendError, match="could not be reached"):
        SqlServerConnection(Dead())
