"""The dedicated SQL pool's door: the SQL core's connection (sql/connection.py) in the pool's
dialect. What it adds: the pool's words for what only it refuses (a pool that does not run
PREDICT), and its permission hint (PREDICT needs no external scripts)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from tdsp_deploy.backends.sql.connection import SqlConnection
from tdsp_deploy.backends.sql.dialect import SQL_SERVER
from tdsp_deploy.backends.sql.errors import _short
from tdsp_deploy.errors import DeploymentFailed, TdspError

POOL_PERMISSION_HINT = (
    "ask the pool's admin to GRANT SELECT ON the model table and EXECUTE ON the procedure to callers; "
    "a push also needs CREATE TABLE, CREATE PROCEDURE and ALTER ON SCHEMA"
)
#: how a pool that does not run PREDICT refuses it: the parser does not know the MODEL argument
PREDICT_REFUSED = re.compile(r"syntax near '?MODEL'?", re.I)


def _predict_refused(text: str, where: str) -> TdspError | None:
    if not PREDICT_REFUSED.search(text):
        return None
    from tdsp_deploy.backends.synapse.predict_tsql import PREDICT_NOTICE

    return DeploymentFailed(
        f"this pool does not run T-SQL PREDICT ({where}SQL Server said no: {_short(text)})",
        hint=PREDICT_NOTICE + ": set target.mode: spark, or ask the workspace's admin whether "
        "PREDICT can be enabled on this pool",
    )


#: what a dedicated SQL pool does otherwise than SQL Server (see sql/dialect.py)
POOL_DIFFERENCES: dict[str, Any] = {
    "name": "dedicated SQL pool",
    "now": "GETUTCDATE()",
    "table_options": "WITH (DISTRIBUTION = ROUND_ROBIN, HEAP)",
    "constraints": False,
    "create_or_alter": False,
    "ddl_in_transaction": False,
    "application_locks": False,
    "permission_needed": "",
    "permission_hint": POOL_PERMISSION_HINT,
    "refusal": _predict_refused,
}
SQL_POOL = dataclasses.replace(SQL_SERVER, **POOL_DIFFERENCES)


class SqlPoolConnection(SqlConnection):
    """A DB-API connection to a dedicated SQL pool, in autocommit; explicit transactions."""

    DIALECT = SQL_POOL
