"""What the fake SQL Server and the fake dedicated SQL pool share: the DB-API 2.0 surface.

PEP 249's exception names (the connection wrapper recognizes a driver's errors by them), the
ODBC driver's wording of a server message, and a cursor over a connection whose ``run(sql,
params)`` answers (column names, rows). Each fake keeps its own platform rules in its
connection and its server; nothing here decides what a statement does.
"""

from __future__ import annotations

from typing import Any, Protocol


# -- DB-API 2.0 exceptions (PEP 249 names: the seam recognizes drivers by them) ---------------
class Error(Exception):
    pass


class DatabaseError(Error):
    pass


class ProgrammingError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


def server_error(
    number: int, message: str, cls: type[DatabaseError] = ProgrammingError, state: str = "42000"
) -> DatabaseError:
    """An exception worded the way the ODBC driver words SQL Server's messages."""
    return cls(state, f"[{state}] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{message} ({number})")


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
            raise Error("Cannot execute on a closed connection")
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
