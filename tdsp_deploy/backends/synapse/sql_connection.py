"""The one door to a dedicated SQL pool: the SQL Server target's connection, in autocommit.

Opening (driver, connection string, Entra token, password from the environment), error
translation and secret scrubbing are the SQL Server target's (``SqlServerConnection``). What
differs: a dedicated SQL pool runs no DDL inside a user transaction, and a driver with
autocommit off wraps every statement in one. So the connection stays in autocommit, and
``transaction()`` is explicit: ``BEGIN TRANSACTION`` ... ``COMMIT TRANSACTION``, or
``ROLLBACK TRANSACTION`` on any error (after an error the pool accepts nothing but the rollback).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from tdsp_deploy.backends.sqlserver.connection import PERMISSION_HINT, SqlServerConnection, translate_error
from tdsp_deploy.errors import BackendError, TdspError

BEGIN = "BEGIN TRANSACTION;"
COMMIT = "COMMIT TRANSACTION;"
ROLLBACK = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;"
POOL_PERMISSION_HINT = (
    "ask the pool's admin to GRANT SELECT ON the model table and EXECUTE ON the procedure to callers; "
    "a push also needs CREATE TABLE, CREATE PROCEDURE and ALTER ON SCHEMA"
)


class SqlPoolConnection(SqlServerConnection):
    """A DB-API connection to a dedicated SQL pool, in autocommit; explicit transactions."""

    def __init__(self, dbapi_connection: Any, *, secrets: Sequence[str] = (), driver: str = "dbapi"):
        super().__init__(dbapi_connection, secrets=secrets, driver=driver)
        with contextlib.suppress(Exception):  # mssql-python and pyodbc: autocommit is a property
            dbapi_connection.autocommit = True

    def __repr__(self) -> str:  # never the connection string: it may hold the password
        return f"SqlPoolConnection(driver={self.driver!r})"

    def query(
        self, sql: str, params: Sequence[Any] = (), *, doing: str = ""
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One statement or batch with ``?`` parameters: its first result set, with column names."""
        with self._lock:
            cursor = None
            try:
                cursor = self._connection.cursor()
                cursor.execute(sql, tuple(params)) if params else cursor.execute(sql)
                return _first_result(cursor)
            except Exception as exc:
                error = translate_error(exc, doing, secrets=self._secrets)
                if error is None:
                    raise
                raise _for_the_pool(error) from None
            finally:
                if cursor is not None:
                    with contextlib.suppress(Exception):
                        cursor.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqlPoolConnection]:
        """All statements in the block, or none. Only DML belongs here (the pool refuses DDL)."""
        with self._lock:
            if self._in_transaction:  # no nested transactions in the pool: the outer block decides
                yield self
                return
            self.execute(BEGIN, doing="begin a transaction")
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                with contextlib.suppress(Exception):
                    self.execute(ROLLBACK, doing="roll back")
                raise
            self._in_transaction = False
            try:
                self.execute(COMMIT, doing="commit")
            except Exception:
                with contextlib.suppress(Exception):
                    self.execute(ROLLBACK, doing="roll back")
                raise


def _for_the_pool(error: TdspError) -> TdspError:
    """The SQL Server target's permission hint speaks of external scripts; PREDICT needs none."""
    if error.hint != PERMISSION_HINT:
        return error
    message = error.message.replace(" (the user needs EXECUTE ANY EXTERNAL SCRIPT to score)", "")
    return BackendError(message, hint=POOL_PERMISSION_HINT)


def _first_result(cursor: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The first result set of a batch (statements before it that return none are skipped)."""
    while True:
        description = getattr(cursor, "description", None)
        if description:
            return [d[0] for d in description], [tuple(row) for row in cursor.fetchall()]
        nextset = getattr(cursor, "nextset", None)
        if nextset is None or not nextset():
            return [], []
