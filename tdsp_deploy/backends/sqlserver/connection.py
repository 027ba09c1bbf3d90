"""SQL Server's door: the SQL core's connection (sql/connection.py) in SQL Server's dialect,
autocommit off, DDL inside transactions. It adds nothing else."""

from __future__ import annotations

from tdsp_deploy.backends.sql.connection import SqlConnection
from tdsp_deploy.backends.sql.dialect import SQL_SERVER


class SqlServerConnection(SqlConnection):
    DIALECT = SQL_SERVER
