"""What the fake SQL Server and the fake dedicated SQL pool share: the DB-API 2.0 surface.

mssql-python's own exception classes, built as the driver builds them from a SQLSTATE and the
server's first message (so a translation that reads what the driver never gives fails), and a
cursor over a connection whose ``run(sql, params)`` answers (column names, rows). Each fake
keeps its own platform rules in its connection and its server; nothing here decides what a
statement does. The same fakes also stand below the wire (tests/fakes/tds), where the real driver
reads their answers and errors from TDS tokens.
"""

from __future__ import annotations

from typing import Any, Protocol

# -- DB-API 2.0 exceptions: the real driver's classes, built as it builds them -----------------
from mssql_python.exceptions import (  # noqa: F401 (the fakes' exceptions: tests import them from here)
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    sqlstate_to_exception,
)

#: the SQLSTATE msodbcsql reports for a server error number (default 42000, as for THROW)
STATES = {
    208: "42S02",  # invalid object name
    2714: "42S01",  # object already exists
    2627: "23000",  # primary key violation
    547: "23000",  # CHECK constraint
    8114: "22018",  # conversion failed
    18456: "28000",  # login failed
    13609: "22018",  # JSON text is not properly formatted
    3930: "25000",  # the transaction is doomed
}


def server_error(number: int, message: str, cls: Any = None, state: str | None = None) -> DatabaseError:
    """SQL Server's error ``number`` with ``message`` as mssql-python raises it: the class its
    SQLSTATE maps to, the text ``Driver Error: <SQLSTATE words>; DDBC Error: [Microsoft][SQL
    Server]<message>``. The number is not in it: the driver keeps only the first diagnostic
    record's SQLSTATE and message. (``cls`` is ignored: the SQLSTATE decides, as in the driver.)"""
    state = state or STATES.get(number, "42000")
    if 50001 <= number < 50100 and not message.startswith("tdsp-"):
        # the generated T-SQL THROWs its messages behind their stable code (tsql.py, predict_tsql.py)
        message = f"tdsp-{number}: {message}"
    error = sqlstate_to_exception(state, f"[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{message}")
    assert error is not None, state
    # what the server sent, for the wire-level responder (tests/fakes/tds) to send as an ERROR token
    error.server_message = (number, message)  # type: ignore[attr-defined]
    return error


class Session(Protocol):
    closed: bool

    def run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]: ...


class FakeCursor:
    """``execute`` hands the statement to the connection's session; the first result set is kept
    for ``fetchall`` (the fakes answer one result set per batch)."""

    def __init__(self, connection: Session):
        self._connection = connection
        self.description: list[tuple[Any, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> FakeCursor:
        if self._connection.closed:
            raise ProgrammingError(
                driver_error="Operation cannot be performed: The cursor is closed.", ddbc_error=""
            )
        columns, rows = self._connection.run(sql, tuple(params))
        self.description = [(c, None, None, None, None, None, None) for c in columns] if columns else None
        self._rows = rows
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def nextset(self) -> bool:
        return False

    def close(self) -> None:
        pass


def install_driver(monkeypatch: Any, connect: Any, password_env: str) -> list[str]:
    """A stand-in ``mssql_python`` module whose ``connect`` hands out ``connect()``'s fake
    connections, so that the CLI connects as in production; the password variable is set to
    a value only the fake sees. Returns the connection strings opened (filled as they are)."""
    import importlib.machinery
    import sys
    import types

    from mssql_python.connection_string_parser import _ConnectionStringParser

    opened: list[str] = []
    module = types.ModuleType("mssql_python")
    module.__spec__ = importlib.machinery.ModuleSpec("mssql_python", None)

    def driver_connect(text: str, **options: Any) -> Any:
        # the real driver's parser first, as its connect() does: a string it refuses fails here
        _ConnectionStringParser(validate_keywords=True)._parse(text)
        opened.append(text)
        return connect()

    def pooling(max_size: int = 100, idle_timeout: int = 600, enabled: bool = True) -> None:
        module.pooled = enabled  # type: ignore[attr-defined]

    module.connect = driver_connect  # type: ignore[attr-defined]
    module.pooling = pooling  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mssql_python", module)
    monkeypatch.setenv(password_env, "pw-only-the-fake-sees")
    return opened
