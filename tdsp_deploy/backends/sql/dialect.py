"""What differs between the engines the SQL targets deploy to, named once.

SQL Server runs DDL inside a transaction, has ``CREATE OR ALTER``, ``SYSUTCDATETIME()``,
DEFAULT constraints and application locks (``sp_getapplock``). A dedicated SQL pool of Azure
Synapse runs no DDL inside a user transaction (so the connection stays in autocommit and
transactions are explicit), has no ``CREATE OR ALTER`` (a stub is created, then altered), takes
``GETUTCDATE()``, no DEFAULT with a function, wants a distribution on every table, and has no
application locks (learn.microsoft.com, Azure Synapse "Use transactions", "CREATE TABLE",
"CREATE PROCEDURE"). The backends, their T-SQL and the connection read these facts here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tdsp_deploy.errors import TdspError


@dataclasses.dataclass(frozen=True)
class Dialect:
    name: str
    #: the current UTC time, as a T-SQL expression
    now: str
    #: what follows a CREATE TABLE's column list ("" when nothing)
    table_options: str
    #: the engine enforces PRIMARY KEY and CHECK constraints, so the tables declare them
    constraints: bool
    create_or_alter: bool
    #: DDL may run inside a user transaction (else the connection is in autocommit and
    #: ``transaction()`` sends BEGIN/COMMIT TRANSACTION itself)
    ddl_in_transaction: bool
    #: the endpoint lock is the server's (sp_getapplock), not a file on this machine
    application_locks: bool
    #: what a permission error says the user lacks, and how to get it
    permission_needed: str
    permission_hint: str
    #: a refusal only this engine makes: (driver text, "doing: ") -> our error, or None
    refusal: Callable[[str, str], TdspError | None] | None = None


SQL_SERVER = Dialect(
    name="SQL Server",
    now="SYSUTCDATETIME()",
    table_options="",
    constraints=True,
    create_or_alter=True,
    ddl_in_transaction=True,
    application_locks=True,
    permission_needed=" (the user needs EXECUTE ANY EXTERNAL SCRIPT to score)",
    permission_hint=(
        "ask the DBA to run: GRANT EXECUTE ANY EXTERNAL SCRIPT TO [your user]; creating the procedure "
        "and model table also needs CREATE PROCEDURE, CREATE TABLE and ALTER ON SCHEMA"
    ),
)
