"""The one door to SQL Server: a narrow wrapper over a DB-API connection.

The backend talks to the server only through ``SqlServerConnection``: ``execute`` (one
statement or batch, ``?`` parameters, rows back), ``query`` (the same with the column names),
``transaction`` (commit on success, rollback on any error) and ``close``. Tests hand in a fake
DB-API connection (tests/sqlserver_fake.py) and the wrapper treats it exactly like a driver's.

Everything the driver says no with is translated here, in ``translate_error``, into
``tdsp_deploy.errors`` with a hint that says what to change, so no caller ever catches a
driver exception. Drivers (mssql-python first, pyodbc when present) and azure-identity are
imported inside functions only: this module is imported when a manifest is validated.

Secrets: the password is read from the environment variable the target names, put into the
connection string handed to the driver, and kept nowhere else; it is scrubbed from every
message that leaves this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import BackendError, DeploymentFailed, TdspError, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.sqlserver.target import SqlServerTarget

#: the exception class names DB-API 2.0 (PEP 249) prescribes; every driver (and the fake) has them
DBAPI_ERRORS = frozenset(
    {
        "Error",
        "Warning",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    }
)
#: msodbcsql.h: hands an Entra access token to the driver before it connects
SQL_COPT_SS_ACCESS_TOKEN = 1256
ENTRA_SCOPE = "https://database.windows.net/.default"
ENABLE_HINT = (
    "ask the DBA to run: EXEC sp_configure 'external scripts enabled', 1; RECONFIGURE WITH OVERRIDE; "
    "(then restart the Launchpad service if the setting does not take)"
)
PERMISSION_HINT = (
    "ask the DBA to run: GRANT EXECUTE ANY EXTERNAL SCRIPT TO [your user]; "
    "creating the procedure and model table also needs CREATE PROCEDURE, CREATE TABLE and ALTER ON SCHEMA"
)
LOGIN_HINT = (
    "check target.server, target.port, target.database and target.auth "
    "(auth.method sql reads the password from the variable auth.password_env)"
)
MAX_MESSAGE = 1200
#: the errors tsql.py THROWs, with what to do about them
TSQL_REFUSALS = {
    50001: "give the new model another model.version (or leave it out: derived from the content)",
    50002: "push the model version before activating it",
    50003: "push the model first (tdsp-deploy push MANIFEST), or name a slot that exists",
    50004: "name a slot of this endpoint (tdsp-deploy status MANIFEST lists them)",
    50005: "give weights that add up to 100, e.g. blue=90 green=10",
}


class SqlServerConnection:
    """One DB-API connection to SQL Server, opened with autocommit off.

    Outside ``transaction()`` every ``execute`` commits on its own (rolled back when it
    fails); inside, nothing is committed until the block ends without an error. Calls are
    serialized, so callers on several threads may share one connection.
    """

    def __init__(self, dbapi_connection: Any, *, secrets: Sequence[str] = (), driver: str = "dbapi"):
        self._connection = dbapi_connection
        self._secrets = tuple(s for s in secrets if s)
        self.driver = driver
        self._lock = threading.RLock()
        self._in_transaction = False
        self._set_autocommit(False)

    def __repr__(self) -> str:  # never the connection string: it may hold the password
        return f"SqlServerConnection(driver={self.driver!r})"

    def _set_autocommit(self, on: bool) -> None:
        """mssql-python and pyodbc: autocommit is a property, which raises a DB-API error when
        the connection is dead; that error is ours to report, not to hide."""
        try:
            self._connection.autocommit = on
        except Exception as exc:
            error = translate_error(exc, "set autocommit", secrets=self._secrets)
            if error is None:
                raise
            raise error from None

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def connect(cls, target: SqlServerTarget) -> SqlServerConnection:
        """Open a connection with mssql-python, or pyodbc when mssql-python is missing."""
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
        if driver == "mssql_python":
            # The endpoint lock lives as long as the session (applock.py); a pooled connection's
            # session outlives close(), so this process opens its sessions unpooled.
            module.pooling(enabled=False)
        try:
            raw = module.connect(text, **options)
        except Exception as exc:
            if type(exc).__name__ == "ConnectionStringParseError":  # mssql-python, before any traffic
                said = _short(_scrub(str(exc), secrets))
                raise BackendError(
                    f"the SQL Server driver refused the connection string: {said}",
                    hint="the installed mssql-python refuses a keyword: report it with its version",
                ) from None
            error = translate_error(exc, f"connect to {target.server}", secrets=secrets)
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
                cursor.execute(sql, tuple(params)) if params else cursor.execute(sql)
                columns, rows = _first_result(cursor)
                self._statement_done()
                return columns, rows
            except Exception as exc:
                self._statement_failed()
                error = translate_error(exc, doing, secrets=self._secrets)
                if error is None:
                    raise
                raise self._our_error(error) from None
            finally:
                if cursor is not None:
                    with contextlib.suppress(Exception):
                        cursor.close()

    # -- what a subclass for another engine changes (the synapse target's SQL pool) --------
    def _statement_done(self) -> None:
        """Outside ``transaction()`` a statement commits on its own."""
        if not self._in_transaction:
            self._connection.commit()

    def _statement_failed(self) -> None:
        """Outside ``transaction()`` a failed statement is rolled back on its own."""
        if not self._in_transaction:
            with contextlib.suppress(Exception):
                self._connection.rollback()

    def _our_error(self, error: TdspError) -> TdspError:
        """The translated error as this engine's users should read it (hints included)."""
        return error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqlServerConnection]:
        """All statements in the block, or none: commit at the end, rollback on any error."""
        with self._lock:
            if self._in_transaction:  # nested: the outer block decides
                yield self
                return
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                with contextlib.suppress(Exception):
                    self._connection.rollback()
                raise
            self._in_transaction = False
            try:
                self._connection.commit()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._connection.rollback()
                error = translate_error(exc, "commit", secrets=self._secrets)
                if error is None:
                    raise
                raise error from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


# -- the connection string ---------------------------------------------------------------------
#: seconds the driver may take to reach the server and log in (its own default is 15 per attempt)
LOGIN_TIMEOUT = 15


def connection_string(target: SqlServerTarget, *, driver: str, password: str | None = None) -> str:
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
    """The first result set of a batch (statements before it that return none are skipped)."""
    while True:
        description = getattr(cursor, "description", None)
        if description:
            return [d[0] for d in description], [tuple(row) for row in cursor.fetchall()]
        nextset = getattr(cursor, "nextset", None)
        if nextset is None or not nextset():
            return [], []


# -- error translation: the one place ------------------------------------------------------------
def is_driver_error(exc: BaseException) -> bool:
    """A DB-API exception of any driver (recognized by PEP 249's class names)."""
    return any(cls.__name__ in DBAPI_ERRORS and cls.__module__ != "builtins" for cls in type(exc).__mro__)


def translate_error(exc: BaseException, doing: str = "", *, secrets: Sequence[str] = ()) -> TdspError | None:
    """Our error for what the driver raised; None for an exception that is not the driver's
    (a bug stays a bug)."""
    if isinstance(exc, TdspError):
        return exc
    if not is_driver_error(exc):
        return None
    text = _scrub(" ".join(str(a) for a in exc.args) or str(exc), secrets)
    lowered = text.lower()
    where = f"{doing}: " if doing else ""
    numbers = {int(n) for n in re.findall(r"\((\d{3,6})\)", text)}
    if "login failed" in lowered or 18456 in numbers or "28000" in text:
        return BackendError(f"{where}SQL Server refused the login: {_short(text)}", hint=LOGIN_HINT)
    if (
        "external scripts enabled" in lowered
        or 39023 in numbers
        or ("sp_execute_external_script" in lowered and "disabled" in lowered)
    ):
        return DeploymentFailed(
            f"{where}Machine Learning Services is off on this instance: {_short(text)}", hint=ENABLE_HINT
        )
    if (
        "permission" in lowered
        and ("denied" in lowered or "does not have" in lowered)
        or numbers & {229, 262, 297, 300}
    ):
        return BackendError(
            f"{where}permission denied (the user needs EXECUTE ANY EXTERNAL SCRIPT to score): {_short(text)}",
            hint=PERMISSION_HINT,
        )
    if numbers & {39004, 39019} or "external script error" in lowered or "script error occurred" in lowered:
        return DeploymentFailed(
            f"{where}the Python script failed inside SQL Server: {_script_message(text)}",
            hint="run the procedure in SSMS for the full traceback, fix the model and push again",
        )
    if numbers & set(TSQL_REFUSALS):  # the THROWs of tsql.py: the deployment's own rules
        return DeploymentFailed(
            f"{where}{_short(_server_text(text))}", hint=TSQL_REFUSALS[min(numbers & set(TSQL_REFUSALS))]
        )
    if any(word in lowered for word in ("timeout", "timed out", "tcp provider", "network", "08001", "08s01")):
        return BackendError(f"{where}SQL Server could not be reached: {_short(text)}", hint=LOGIN_HINT)
    return BackendError(f"{where}SQL Server said no: {_short(text)}")


def _script_message(text: str) -> str:
    """The Python part of an external-script error (SQL Server wraps it in its own lines)."""
    match = re.search(r"(?:An external script error occurred:|Error in execution\.)\s*(.*)", text, re.S)
    return _short(match.group(1).strip() if match else text)


def _server_text(text: str) -> str:
    """The server's own message, without the driver's [state] [vendor][driver] prefix."""
    return re.sub(r"^.*\[SQL Server\]", "", text, flags=re.S).strip()


#: the shortest run of a secret's characters a message may not repeat
SCRUB_MIN = 4


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` without any secret, and without any run of SCRUB_MIN or more of its characters:
    a parser or a server quotes pieces of a value (``keyword 'w}}' has no value``), not only
    whole ones."""
    secrets = [s for s in secrets if s]
    if secrets:
        out: list[str] = []
        at = 0
        while at < len(text):
            longest = 0
            for secret in secrets:
                end = at + 1
                while end <= len(text) and text[at:end] in secret:
                    end += 1
                longest = max(longest, end - 1 - at)
            if longest >= min(SCRUB_MIN, *(len(s) for s in secrets)):
                out.append("***")
                at += longest
            else:
                out.append(text[at])
                at += 1
        text = "".join(out)
    return re.sub(r"(?i)(PWD|Password)=(\{(?:[^}]|\}\})*\}?|[^;]*)", r"\1=***", text)


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
