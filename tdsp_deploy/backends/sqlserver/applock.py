"""The endpoint's lock on a SQL Server: an application lock (``sp_getapplock``) owned by the session.

Two pushes to one endpoint may come from two machines (a laptop and a CI runner), so the lock
lives on the server, not in a local file. A session-owned application lock is held until it
is released or the session ends, so a push that dies (killed, or its machine lost) releases it
with its connection: no stale lock is left to take over. (That needs close() to end the
session: mssql-python pools sessions by default, so connection.py opens them unpooled.)
sp_getapplock answers 0 (granted), 1 (granted after waiting), -1 (timed out), -2 (cancelled),
-3 (deadlock victim) or -999 (parameter or call error); only 0 and 1 hold the lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from tdsp_deploy.errors import BackendError, TdspError
from tdsp_deploy.locks import EndpointLock

if TYPE_CHECKING:
    from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

GET_APPLOCK = """-- tdsp-deploy: get_applock
SET NOCOUNT ON;
DECLARE @resource nvarchar(255) = ?, @wait_ms int = ?;
DECLARE @result int;
EXEC @result = sp_getapplock @Resource = @resource, @LockMode = 'Exclusive',
    @LockOwner = 'Session', @LockTimeout = @wait_ms;
SELECT @result AS [result];"""

RELEASE_APPLOCK = """-- tdsp-deploy: release_applock
SET NOCOUNT ON;
DECLARE @resource nvarchar(255) = ?;
EXEC sp_releaseapplock @Resource = @resource, @LockOwner = 'Session';"""

GRANTED = (0, 1)
TIMED_OUT = -1


def resource_name(database: str, procedure: str) -> str:
    """One lock per endpoint per database (sp_getapplock takes up to 255 characters)."""
    return f"tdsp-deploy:{database}:{procedure}"[:255]


class ApplicationLock(EndpointLock):
    """Held while a command changes the endpoint; waits up to ``timeout`` seconds, saying so."""

    def __init__(
        self,
        connection: SqlServerConnection,
        resource: str,
        *,
        endpoint: str,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
    ):
        super().__init__(endpoint, timeout=timeout, on_wait=on_wait)
        self.connection = connection
        self.resource = resource

    def _try(self, wait_ms: int) -> int:
        rows = self.connection.execute(
            GET_APPLOCK, (self.resource, wait_ms), doing="taking the endpoint lock"
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else -999

    def acquire(self) -> None:
        result = self._try(0)
        if result == TIMED_OUT and self.timeout > 0:
            self.on_wait(f"another command is changing endpoint '{self.endpoint}' on this server; waiting")
            result = self._try(int(self.timeout * 1000))
        if result in GRANTED:
            return
        if result == TIMED_OUT:
            raise BackendError(
                f"endpoint '{self.endpoint}' is locked by another command on the server",
                hint="wait for it to finish, or raise --lock-timeout",
            )
        raise BackendError(
            f"sp_getapplock answered {result} for the lock of endpoint '{self.endpoint}'",
            hint="-2 is a cancelled wait and -3 a deadlock: run the command again",
        )

    def release(self) -> None:
        # a failure here must not hide the command's own error; the lock goes with the session anyway
        with contextlib.suppress(TdspError):
            self.connection.execute(RELEASE_APPLOCK, (self.resource,), doing="releasing the endpoint lock")
