"""The one door to a dedicated SQL pool: the SQL Server target's connection, in autocommit.

Opening (driver, connection string, Entra token, password from the environment), error
translation and secret scrubbing are the SQL Server target's (``SqlServerConnection``). What
differs: a dedicated SQL pool runs no DDL inside a user transaction, and a driver with
autocommit off wraps every statement in one. So the connection stays in autocommit, and
``transaction()`` is explicit: ``BEGIN TRANSACTION`` ... ``COMMIT TRANSACTION``, or
``ROLLBACK TRANSACTION`` on any error (after an error the pool accepts nothing but the rollback).
``query`` is the SQL Server connection's: only its hooks differ (no commit or rollback per
statement, the pool's words for its errors).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from tdsp_deploy.backends.sqlserver.connection import PERMISSION_HINT, SqlServerConnection
from tdsp_deploy.backends.sqlserver.server_errors import CODE
from tdsp_deploy.errors import BackendError, DeploymentFailed, TdspError

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
        self._set_autocommit(True)

    def __repr__(self) -> str:  # never the connection string: it may hold the password
        return f"SqlPoolConnection(driver={self.driver!r})"

    # autocommit: the pool commits each statement itself, and rolls back a failed one
    def _statement_done(self) -> None:
        pass

    def _statement_failed(self) -> None:
        pass

    def _our_error(self, error: TdspError) -> TdspError:
        return _for_the_pool(error)

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


#: what to do about the errors predict_tsql.py THROWs (its numbers, its meanings)
POOL_REFUSALS = {
    50001: "give the new model another model.version (or leave it out: derived from the content)",
    50002: "push the model version before pointing a slot at it",
    50003: "push the model first (tdsp-deploy push MANIFEST), or name a slot that exists",
    50004: "name a table, view or #temp table: [schema.]name",
    50005: "give weights that add up to 100, e.g. blue=90 green=10",
    50006: "name a slot of this endpoint (tdsp-deploy status MANIFEST lists them)",
    50007: "the pool's message says why PREDICT failed; `tdsp-deploy logs MANIFEST` lists such calls",
}


#: how a pool that does not run PREDICT refuses it: the parser does not know the MODEL argument
PREDICT_REFUSED = re.compile(r"syntax near '?MODEL'?", re.I)


def _for_the_pool(error: TdspError) -> TdspError:
    """The SQL Server target's translation, with the pool's own words: its THROWs (the same
    numbers as the SQL Server target's mean other things here), and a permission hint without
    external scripts (PREDICT needs none)."""
    if PREDICT_REFUSED.search(error.message):
        from tdsp_deploy.backends.synapse.predict_tsql import PREDICT_NOTICE

        return DeploymentFailed(
            f"this pool does not run T-SQL PREDICT ({error.message})",
            hint=PREDICT_NOTICE + ": set target.mode: spark, or ask the workspace's admin whether "
            "PREDICT can be enabled on this pool",
        )
    numbers = {int(n) for n in CODE.findall(error.message)} & set(POOL_REFUSALS)
    if numbers:
        message = re.sub(r"SQL Server said no: .*\[SQL Server\]", "", error.message)
        return DeploymentFailed(message, hint=POOL_REFUSALS[min(numbers)])
    if error.hint != PERMISSION_HINT:
        return error
    message = error.message.replace(" (the user needs EXECUTE ANY EXTERNAL SCRIPT to score)", "")
    return BackendError(message, hint=POOL_PERMISSION_HINT)
