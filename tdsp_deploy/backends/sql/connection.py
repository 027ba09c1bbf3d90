"""The one door to SQL Server or a dedicated SQL pool: a narrow wrapper over a DB-API connection.

The backends talk to the engine only through ``SqlConnection``: ``execute`` (one statement or
batch, ``?`` parameters, rows back), ``query`` (the same with the column names),
``transaction`` (commit on success, rollback on any error) and ``close``. Tests hand in a fake
DB-API connection (tests/fakes/sqlserver_fake.py, tests/fakes/synapse_sql_fake.py) and the wrapper treats it
exactly like a driver's.

SQL Server runs DDL in transactions: the connection has autocommit off and commits (or rolls
back) each statement outside ``transaction()``. A dedicated SQL pool runs no DDL inside a user
transaction, and a driver with autocommit off wraps every statement in one: its connection stays
in autocommit and ``transaction()`` sends ``BEGIN TRANSACTION`` ... ``COMMIT TRANSACTION`` (or
``ROLLBACK TRANSACTION`` on any error; after an error the pool accepts nothing but the rollback).
The ``Dialect`` says which.

Everything the driver says no with is translated at this door, once, by
``errors.translate_error`` in the dialect's words, into ``tdsp_deploy.errors`` with a hint that
says what to change, so no caller ever catches a driver exception. Each statement's results are read to
the end before it commits (an error may follow the first result set), and a None parameter
is written as ``NULL`` rather than bound (``bind_nulls``). Drivers (mssql-python first,
pyodbc when present) and azure-identity are imported inside functions only: this module is
imported when a manifest is validated.

Secrets: the password is read from the environment variable the target names, put into the
connection string handed to the driver (every value brace-quoted), and kept nowhere else; it
is scrubbed, and any piece of it, from every message that leaves this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from tdsp_deploy.backends.sql.dialect import SQL_SERVER, Dialect
from tdsp_deploy.backends.sql.errors import (  # noqa: F401 (the seam's names, re-exported)
    ENABLE_HINT,
    LOGIN_HINT,
    PERMISSION_HINT,
    TSQL_REFUSALS,
    _scrub,
    _short,
    is_driver_error,
    translate_error,
)
from tdsp_deploy.errors import BackendError, UsageError

#: a target with the SQL connection fields (server, port, database, auth, encrypt, ...)
SqlTarget = Any

#: msodbcsql.h: hands an Entra access token to the driver before it connects
SQL_COPT_SS_ACCESS_TOKEN = 1256
ENTRA_SCOPE = "https://database.windows.net/.default"


BEGIN = "BEGIN TRANSACTION;"
COMMIT = "COMMIT TRANSACTION;"
ROLLBACK = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;"


class SqlConnection:
    """One DB-API connection to the engine ``dialect`` names.

    Outside ``transaction()`` every ``execute`` commits on its own (rolled back when it
    fails); inside, nothing is committed until the block ends without an error. Calls are
    serialized, so callers on several threads may share one connection.
    """

    #: the engine a connection of this class talks to, unless one is handed in
    DIALECT: Dialect = SQL_SERVER

    def __init__(
        self,
        dbapi_connection: Any,
        *,
        secrets: Sequence[str] = (),
        driver: str = "dbapi",
        dialect: Dialect | None = None,
    ):
        self._connection = dbapi_connection
        self._secrets = tuple(s for s in secrets if s)
        self.driver = driver
        self.dialect = dialect or self.DIALECT
        self._lock = threading.RLock()
        self._in_transaction = False
        # explicit transactions (BEGIN/COMMIT) need autocommit, implicit ones need it off
        self._set_autocommit(not self.dialect.ddl_in_transaction)

    def __repr__(self) -> str:  # never the connection string: it may hold the password
        return f"{type(self).__name__}(driver={self.driver!r})"

    def _set_autocommit(self, on: bool) -> None:
        """mssql-python and pyodbc: autocommit is a property, which raises a DB-API error when
        the connection is dead; that error is ours to report, not to hide."""
        try:
            self._connection.autocommit = on
        except Exception as exc:
            raise self._translated(exc, "set autocommit") from None

    def _translated(self, exc: Exception, doing: str) -> Exception:
        """Our error for a driver's exception (the exception itself when it is not the driver's)."""
        return translate_error(exc, doing, secrets=self._secrets, dialect=self.dialect) or exc

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def connect(cls, target: SqlTarget) -> SqlConnection:
        """Open a connection with mssql-python, or pyodbc when mssql-python is missing."""
        dialect = cls.DIALECT
        secrets: list[str] = []
        attrs: dict[int, bytes] = {}
        auth = target.auth
        method = getattr(auth, "method", "sql")
        if method == "entra":
            token = _entra_token()
            secrets.append(token)
            encoded = token.encode("utf-16-le")
            attrs[SQL_COPT_SS_ACCESS_TOKEN] = struct.pack(f"<I{len(encoded)}s", len(encoded), encoded)
        elif method == "sql":
            name = auth.password_env
            password = os.environ.get(name)
            if not password:
                raise UsageError(
                    f"target.auth.password_env names {name}, which is not set",
                    hint=f"export {name}=... (the password is never written in the manifest)",
                )
            secrets.append(password)
        driver, module = _driver()
        text = connection_string(target, driver=driver, password=secrets[0] if method == "sql" else None)
        options: dict[str, Any] = {"timeout": LOGIN_TIMEOUT}
        if attrs:
            options["attrs_before"] = attrs
        # The endpoint lock lives as long as the session (applock.py); a pooled connection's
        # session outlives close(), so this process opens its sessions unpooled.
        if driver == "mssql_python":
            module.pooling(enabled=False)
        else:
            module.pooling = False  # pyodbc: read when its first connection opens
        try:
            raw = module.connect(text, **options)
        except Exception as exc:
            if type(exc).__name__ == "ConnectionStringParseError":  # mssql-python, before any traffic
                said = _short(_scrub(str(exc), secrets))
                raise BackendError(
                    f"the SQL Server driver refused the connection string: {said}",
                    hint="the installed mssql-python refuses a keyword: report it with its version",
                ) from None
            error = translate_error(exc, f"connect to {target.server}", secrets=secrets, dialect=dialect)
            if error is None:
                raise
            raise error from None
        return cls(raw, secrets=secrets, driver=driver)

    # -- talking -------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = (), *, doing: str = "") -> list[tuple[Any, ...]]:
        """Run one statement or batch with ``?`` parameters; the rows of its first result set."""
        return self.query(sql, params, doing=doing)[1]

    def query(
        self, sql: str, params: Sequence[Any] = (), *, doing: str = ""
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Like ``execute``, with the result set's column names."""
        with self._lock:
            cursor = None
            try:
                cursor = self._connection.cursor()
                sql, params = bind_nulls(sql, params)
                cursor.execute(sql, tuple(params)) if params else cursor.execute(sql)
                columns, rows = _first_result(cursor)
                self._statement_done()
                return columns, rows
            except Exception as exc:
                self._statement_failed()
                raise self._translated(exc, doing) from None
            finally:
                if cursor is not None:
                    with contextlib.suppress(Exception):
                        cursor.close()

    def _statement_done(self) -> None:
        """Outside ``transaction()`` a statement commits on its own (in autocommit, the engine does)."""
        if not self._in_transaction and self.dialect.ddl_in_transaction:
            self._connection.commit()

    def _statement_failed(self) -> None:
        """Outside ``transaction()`` a failed statement is rolled back on its own."""
        if not self._in_transaction and self.dialect.ddl_in_transaction:
            with contextlib.suppress(Exception):
                self._connection.rollback()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqlConnection]:
        """All statements in the block, or none: commit at the end, rollback on any error. On an
        engine without DDL in transactions, only DML belongs here."""
        with self._lock:
            if self._in_transaction:  # nested: the outer block decides
                yield self
                return
            explicit = not self.dialect.ddl_in_transaction
            if explicit:
                self.execute(BEGIN, doing="begin a transaction")
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                self._roll_back(explicit)
                raise
            self._in_transaction = False
            try:
                if explicit:
                    self.execute(COMMIT, doing="commit")
                else:
                    self._connection.commit()
            except Exception as exc:
                self._roll_back(explicit)
                raise self._translated(exc, "commit") from None

    def _roll_back(self, explicit: bool) -> None:
        with contextlib.suppress(Exception):
            if explicit:
                self.execute(ROLLBACK, doing="roll back")
            else:
                self._connection.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


# -- NULL parameters --------------------------------------------------------------------------
def bind_nulls(sql: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """``sql`` with each marker whose value is None written as ``NULL``, and the other values.

    A driver cannot tell the type of a None: mssql-python asks the server
    (``sp_describe_undeclared_parameters``, a round trip inside the open transaction; if it
    fails, it binds ``varchar(1)``). The generated statements put every marker where a NULL
    literal means the same (``DECLARE @x t = ?``, ``CAST(? AS t)``, ``@slot = ?``)."""
    if not any(p is None for p in params):
        return sql, list(params)
    out: list[str] = []
    values: list[Any] = []
    index = 0
    for kind, text in _tokens(sql):
        if kind == "?":
            if index >= len(params):
                raise ValueError(f"the statement has more markers than the {len(params)} values")
            if params[index] is None:
                out.append("NULL")
            else:
                out.append("?")
                values.append(params[index])
            index += 1
        else:
            out.append(text)
    if index != len(params):
        raise ValueError(f"the statement has {index} markers for {len(params)} values")
    return "".join(out), values


_TOKEN = re.compile(r"N?'(?:[^']|'')*'|\[(?:[^\]]|\]\])*\]|--[^\n]*|/\*.*?\*/|\?|[^'\[?/-]+|.", re.S)


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    """T-SQL as markers (``?``) and everything else; a ``?`` in a string literal, a bracketed
    name or a comment is text."""
    for match in _TOKEN.finditer(sql):
        text = match.group(0)
        yield ("?" if text == "?" else "text"), text


# -- the connection string ---------------------------------------------------------------------
#: seconds the driver may take to reach the server and log in (its own default is 15 per attempt)
LOGIN_TIMEOUT = 15


def connection_string(target: SqlTarget, *, driver: str, password: str | None = None) -> str:
    """The driver's connection string for ``target`` (with the password when given: never log it).

    Only keywords mssql-python's parser accepts (it refuses the ones it sets itself, ``Driver``
    and ``APP``, and any it does not know), and every value in braces, so that no value -- a
    user name, a password, a server -- can end its field and add a keyword of its own."""
    parts: dict[str, str] = {}
    if driver.startswith("pyodbc"):
        parts["Driver"] = driver.split(":", 1)[1]
    parts["Server"] = server_address(target)
    parts["Database"] = target.database
    parts["Encrypt"] = "yes" if getattr(target, "encrypt", True) else "no"
    parts["TrustServerCertificate"] = "yes" if getattr(target, "trust_server_certificate", False) else "no"
    method = getattr(target.auth, "method", "sql")
    if method == "sql":
        parts["UID"] = target.auth.username
        if password is not None:
            parts["PWD"] = password
    elif method == "integrated":
        parts["Trusted_Connection"] = "yes"
    return "".join(f"{key}={_value(key, value)};" for key, value in parts.items())


def server_address(target: Any) -> str:
    """``tcp:host,port``; a named instance (``host\\instance``) without a port the manifest gave
    is left to the SQL Server Browser to find: with both, the ODBC driver uses the port."""
    server = target.server
    port = getattr(target, "port", None)
    port_given = "port" in getattr(target, "model_fields_set", {"port"})
    if "\\" in server and not port_given:
        return server
    return f"tcp:{server},{port}" if port else f"tcp:{server}"


def _value(key: str, value: str) -> str:
    """A value in braces, its closing braces doubled (MS-ODBCSTR): whatever it holds, even a
    value that already starts with ``{`` and ends with ``}``, it stays one value."""
    if not value or "\0" in value:
        raise UsageError(
            f"the connection's {_FIELD_NAMES.get(key, key)} may not be empty or hold a NUL character",
            hint="check target.server, target.database, target.auth and the password variable",
        )
    return "{" + value.replace("}", "}}") + "}"


_FIELD_NAMES = {"PWD": "password", "UID": "user name", "Server": "server", "Database": "database"}


def _driver() -> tuple[str, Any]:
    try:
        import mssql_python

        return "mssql_python", mssql_python
    except ImportError:
        pass
    try:
        import pyodbc
    except ImportError:
        raise BackendError(
            "no SQL Server driver is installed (mssql-python or pyodbc)",
            hint="pip install 'tdsp-deploy[sqlserver]'",
        ) from None
    found = sorted(d for d in pyodbc.drivers() if re.fullmatch(r"ODBC Driver \d+ for SQL Server", d))
    if not found:
        raise BackendError(
            "pyodbc is installed but no 'ODBC Driver NN for SQL Server' is",
            hint="install Microsoft's ODBC Driver 18 for SQL Server, or pip install mssql-python",
        )
    return f"pyodbc:{found[-1]}", pyodbc


def _entra_token() -> str:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise BackendError(
            "target.auth.method entra needs azure-identity", hint="pip install 'tdsp-deploy[sqlserver]'"
        ) from None
    try:
        return DefaultAzureCredential().get_token(ENTRA_SCOPE).token
    except Exception as exc:
        raise BackendError(
            f"could not get an Entra token for SQL Server: {_short(str(exc))}",
            hint="sign in with `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET",
        ) from None


def _first_result(cursor: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The first result set of a batch (statements before it that return none are skipped),
    after reading every result and message the batch sends: an error raised after the first
    result set (a failing INSERT into the request log, a THROW) comes with a later one, and
    the driver would drop it unread at commit."""
    found: tuple[list[str], list[tuple[Any, ...]]] | None = None
    while True:
        description = getattr(cursor, "description", None)
        if description and found is None:
            found = [d[0] for d in description], [tuple(row) for row in cursor.fetchall()]
        nextset = getattr(cursor, "nextset", None)
        if nextset is None or not nextset():
            return found if found is not None else ([], [])
