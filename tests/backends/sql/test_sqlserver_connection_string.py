"""The connection string against the real driver: mssql-python's own parser and connect().

Every string the target builds goes through ``mssql_python.connect`` aimed at a closed
loopback port: a string the driver refuses raises ``ConnectionStringParseError`` before any
traffic (the test fails), one it takes reaches the TCP connect and fails there with the
driver's ``OperationalError`` (the test passes). Values that try to end their field and add a
keyword must come back from the driver's parser as one value, unchanged.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest

from tdsp_deploy.backends.sql import connection
from tdsp_deploy.backends.sql.connection import connection_string, server_address, translate_error
from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.errors import BackendError, ExitCode, UsageError

mssql_python = pytest.importorskip("mssql_python")
from mssql_python.connection_string_parser import _ConnectionStringParser  # noqa: E402

PASSWORD_ENV = "TDSP_TEST_CS_PASSWORD"
#: passwords and user names shaped to break out of their field
HOSTILE = [
    "plain",
    "s3cret;pw",
    "{a};HostNameInCertificate={evil.example}",
    "}};Encrypt=no;{",
    "{already-braced}",
    "}",
    "{",
    "a=b",
    " lead and trail ",
    "semi;colon;Database=master",
    "p}w{d}}",
    "ünïcødé-密码",
    "tab\tand\nnewline",
]


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port nothing listens on: bound and never listening, so connections to it are
    refused and no other process (another test worker, another run) can take it meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]


def target(**overrides: Any) -> SqlServerTarget:
    data: dict[str, Any] = {
        "kind": "sqlserver",
        "server": "127.0.0.1",
        "database": "scoring",
        "auth": {"method": "sql", "username": "deployer", "password_env": PASSWORD_ENV},
        "inputs": [{"name": "x", "type": "float"}],
        "outputs": [{"name": "y", "type": "float"}],
    }
    data.update(overrides)
    return SqlServerTarget.model_validate(data)


def parsed(text: str) -> dict[str, str]:
    """What the driver's own parser (keywords checked, as connect() does) reads."""
    return _ConnectionStringParser(validate_keywords=True)._parse(text)


AUTHS = [
    {"method": "sql", "username": "deployer", "password_env": PASSWORD_ENV},
    {"method": "entra"},
    {"method": "integrated"},
]


@pytest.mark.parametrize(
    ("auth", "encrypt", "trust", "port"),
    list(itertools.product(AUTHS, [True, False], [True, False], [None, 14330])),
    ids=lambda v: v["method"] if isinstance(v, dict) else str(v),
)
def test_every_connection_string_is_one_the_driver_parses(auth, encrypt, trust, port):
    fields: dict[str, Any] = {"auth": auth, "encrypt": encrypt, "trust_server_certificate": trust}
    if port:
        fields["port"] = port
    text = connection_string(
        target(**fields), driver="mssql_python", password="pw" if auth["method"] == "sql" else None
    )
    params = parsed(text)
    assert "app" not in params and "driver" not in params
    assert params["server"] == f"tcp:127.0.0.1,{port or 1433}"
    assert params["encrypt"] == ("yes" if encrypt else "no")
    assert params["trustservercertificate"] == ("yes" if trust else "no")


@pytest.mark.parametrize("method", ["sql", "integrated"])
def test_the_driver_takes_the_string_and_fails_only_at_the_network(method, monkeypatch):
    """connect() itself: a refused string is a ConnectionStringParseError (exit 1 before the fix);
    a taken one fails to reach the closed port, which the target reports as exit 3."""
    monkeypatch.setenv(PASSWORD_ENV, "pw;{x}")
    monkeypatch.setattr(connection, "LOGIN_TIMEOUT", 1)  # the driver retries a refused port until then
    auth = AUTHS[0] if method == "sql" else AUTHS[2]
    port = closed_port()
    t = target(auth=auth, port=port, encrypt=False)
    text = connection_string(t, driver="mssql_python", password="pw;{x}" if method == "sql" else None)
    with pytest.raises(mssql_python.OperationalError):
        mssql_python.connect(text, timeout=1)
    with pytest.raises(BackendError) as refused:
        SqlServerConnection.connect(t)
    assert refused.value.exit_code == ExitCode.BACKEND
    assert "could not be reached" in refused.value.message
    assert "pw;{x}" not in refused.value.message


@pytest.mark.parametrize("value", HOSTILE)
def test_no_value_adds_a_keyword(value):
    """The user name and the password come back from the driver's parser exactly, alone."""
    t = target(auth={"method": "sql", "username": value, "password_env": PASSWORD_ENV})
    params = parsed(connection_string(t, driver="mssql_python", password=value))
    assert set(params) == {"server", "database", "encrypt", "trustservercertificate", "uid", "pwd"}
    assert params["uid"] == value
    assert params["pwd"] == value
    assert params["encrypt"] == "yes"


def test_a_braced_user_name_does_not_pass_through():
    """Before: a value already in braces was written as it was, and its inner '};' ended it."""
    t = target(
        auth={
            "method": "sql",
            "username": "{a};HostNameInCertificate={evil.example}",
            "password_env": PASSWORD_ENV,
        }
    )
    params = parsed(connection_string(t, driver="mssql_python", password="pw"))
    assert "hostnameincertificate" not in params


def test_an_empty_password_is_a_clear_error_not_a_parser_message():
    with pytest.raises(UsageError):
        connection_string(target(), driver="mssql_python", password="")


def test_a_named_instance_goes_without_a_port():
    """With host\\instance and a port the ODBC driver uses the port: the instance is then
    unreachable unless it listens there. No port in the manifest: the Browser finds it."""
    named = target(server="sqlhost\\ML")
    assert server_address(named) == "sqlhost\\ML"
    assert parsed(connection_string(named, driver="mssql_python", password="pw"))["server"] == "sqlhost\\ML"
    assert server_address(target(server="sqlhost\\ML", port=1500)) == "tcp:sqlhost\\ML,1500"
    assert server_address(target(server="sqlhost")) == "tcp:sqlhost,1433"


def test_connection_errors_never_carry_a_piece_of_the_password():
    """Driver and parser messages quote pieces of a value; none of four characters survives."""
    secret = "Tr0ub4dor;&3xyz"
    exc = mssql_python.exceptions.OperationalError(
        driver_error="Client unable to establish connection",
        ddbc_error="[Microsoft][ODBC Driver 18 for SQL Server]near '&3xyz' and 'Tr0ub'",
    )
    error = translate_error(exc, "connect", secrets=[secret])
    assert error is not None
    for i in range(len(secret) - 3):
        assert secret[i : i + 4] not in error.message
    assert "Client unable to establish connection" in error.message


def test_a_parser_refusal_is_scrubbed_and_exits_3(monkeypatch):
    """Should the driver refuse a string, its message (which quotes pieces of values) is scrubbed."""
    monkeypatch.setenv(PASSWORD_ENV, "p;w}}verysecret")

    def refuse(text: str, **options: Any) -> Any:
        raise mssql_python.exceptions.ConnectionStringParseError(
            ["Incomplete specification: keyword 'w}}verysecret' has no value (missing '=')"]
        )

    monkeypatch.setattr(mssql_python, "connect", refuse)
    with pytest.raises(BackendError) as refused:
        SqlServerConnection.connect(target())
    assert refused.value.exit_code == ExitCode.BACKEND
    assert "verysecret" not in refused.value.message and "***" in refused.value.message


def test_a_push_of_the_starter_to_an_unreachable_server_exits_3(cli, tmp_path, monkeypatch):
    """Before: exit 1, 'unexpected error: ConnectionStringParseError ... Reserved keyword app'."""
    project = tmp_path / "proj"
    created = cli("init", project, "--target", "sqlserver", "--json")
    assert created.exit_code == 0, created.stderr
    manifest = project / "deploy.yaml"
    port = closed_port()
    manifest.write_text(manifest.read_text().replace("  # port: 1433", f"  port: {port}\n  encrypt: false"))
    secret = "Wh0le;{q7zX}kv!"
    monkeypatch.setattr(connection, "LOGIN_TIMEOUT", 1)
    monkeypatch.setenv("SQL_SERVER", "127.0.0.1")
    monkeypatch.setenv("SQL_PASSWORD", secret)
    pushed = cli("push", manifest, "--json")
    assert pushed.exit_code == ExitCode.BACKEND, pushed.stdout + pushed.stderr
    said = pushed.stdout + pushed.stderr
    assert "could not be reached" in said
    for i in range(len(secret) - 3):
        assert secret[i : i + 4] not in said
