"""The `sqlserver` target's schema: in-database scoring with SQL Server Machine Learning Services.

What it adds to the SQL core's fields (sql/target.py): a server and database that must be
given, and a ``procedure`` short enough for its single-row twin (``<procedure>_row``).
The model's bytes go into a versioned model table; a generated procedure scores rows with
``sp_execute_external_script`` (Python).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tdsp_deploy.backends.sql.target import (  # noqa: F401 (the schema's names, as tests import them)
    AB_KEY_DESCRIPTION,
    MAX_IDENTIFIER,
    MODEL_TABLE,
    REQUEST_LOG_DESCRIPTION,
    REQUEST_LOG_TABLE,
    TRAFFIC_DESCRIPTION,
    TRAFFIC_TABLE,
    Auth,
    Column,
    Identifier,
    Port,
    SqlTargetBase,
    check_identifier,
    check_tables_and_key,
    matching,
    procedure_name,
    quote_identifier,
    sql_type,
)

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(\\[A-Za-z0-9_$-]{1,16})?$")


class SqlServerTarget(SqlTargetBase):
    """In-database scoring: a model table and a scoring procedure (Machine Learning Services)."""

    kind: Literal["sqlserver"]
    server: str = Field(description="Host name or address (optionally host\\instance).")
    port: Port = 1433
    database: Identifier = Field(description="Database that holds the model table and procedure.")
    schema_: Identifier = Field(default="dbo", alias="schema", description="Schema of table and procedures.")
    auth: Auth = Field(description="method: sql (username, password_env) | entra | integrated.")
    model_table: Identifier = Field(default=MODEL_TABLE, description="Versioned model table.")
    traffic_table: Identifier = Field(default=TRAFFIC_TABLE, description=TRAFFIC_DESCRIPTION)
    request_log_table: Identifier = Field(
        default=REQUEST_LOG_TABLE, description=REQUEST_LOG_DESCRIPTION
    )
    request_log: bool = Field(
        default=True, description="Log every call of the scoring procedures (needed by `ab analyze`)."
    )
    ab_key: Identifier | None = Field(default=None, description=AB_KEY_DESCRIPTION)
    procedure: Identifier | None = Field(
        default=None, description="Scoring procedure (default: score_<name>, '-' as '_')."
    )
    inputs: list[Column] = Field(
        min_length=1, description="Input columns, in the order the model takes them."
    )
    outputs: list[Column] = Field(min_length=1, description="Output columns, in order.")
    encrypt: bool = True
    trust_server_certificate: bool = False

    @field_validator("server")
    @classmethod
    def _host(cls, value: str) -> str:
        return matching(_HOST, value, "must be a host name or address, optionally host\\instance")

    @model_validator(mode="after")
    def _ab_key_is_an_input(self) -> SqlServerTarget:
        check_tables_and_key(self)
        return self

    @model_validator(mode="after")
    def _row_procedure_fits(self) -> SqlServerTarget:
        if self.procedure is not None and len(self.procedure) > MAX_IDENTIFIER - len("_row"):
            raise ValueError(f"procedure: at most {MAX_IDENTIFIER - 4} characters (a '_row' twin is made)")
        return self

    def procedure_name(self, endpoint: str) -> str:
        """The scoring procedure's name: ``procedure`` or ``score_<endpoint>``."""
        return check_identifier(procedure_name(self.procedure, endpoint))

    def row_procedure_name(self, endpoint: str) -> str:
        return self.procedure_name(endpoint) + "_row"
