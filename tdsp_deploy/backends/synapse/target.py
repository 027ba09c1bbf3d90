"""The `synapse` target's schema: Azure Synapse Analytics, in one of two modes.

- ``mode: spark``: a PySpark batch-scoring job, kept in the workspace's ADLS Gen2 storage and
  submitted to a Spark pool through the Synapse Livy API;
- ``mode: sql``: an ONNX model behind ``PREDICT`` in a dedicated SQL pool.

Both modes share the column lists (``inputs`` / ``outputs``, SQL types, as the SQL Server target
writes them). Each mode's own fields are required in that mode and refused in the other, so a
manifest never carries settings that silently do nothing.

Names follow Azure's rules (learn.microsoft.com, "Naming rules and restrictions for Azure
resources"): a workspace is 1-50 lower-case letters, digits and '-', starting and ending with a
letter or digit; a Spark pool 1-15 letters and digits, a letter first; a storage account 3-24
lower-case letters and digits; a container 3-63 lower-case letters, digits and '-'.

This module imports only pydantic and the standard library (``validate`` and ``schema`` load it).
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from tdsp_deploy.backends.sql import target as sql_target
from tdsp_deploy.backends.sql.target import Auth, Column, Identifier, Port, SqlTargetBase, matching
from tdsp_deploy.manifest.model import Strict

_WORKSPACE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")
_SPARK_POOL = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,14}$")
_ABFSS = re.compile(
    r"^abfss://(?P<container>[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})"
    r"@(?P<account>[a-z0-9]{3,24})\.dfs\.core\.windows\.net(?P<path>(?:/[^/?#\s]+)*)/?$"
)
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}(?:\.[A-Za-z_][A-Za-z0-9_]{0,127})?$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_SPARK_CONF_KEY = re.compile(r"^(?:spark|livy)\.[A-Za-z0-9_.-]+$")

#: What a path's extension says about its format (no extension: parquet, Spark's default).
FORMAT_BY_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".delta": "delta"}
DataFormat = Literal["parquet", "csv", "delta"]

#: Synapse Spark node sizes: (vCores, memory the Synapse UI gives a driver/executor of that size).
NODE_SIZES: dict[str, tuple[int, str]] = {
    "Small": (4, "28g"),
    "Medium": (8, "56g"),
    "Large": (16, "112g"),
    "XLarge": (32, "224g"),
    "XXLarge": (64, "400g"),
}
NodeSize = Literal["Small", "Medium", "Large", "XLarge", "XXLarge"]

SPARK_FIELDS = (
    "spark_pool",
    "storage",
    "input",
    "output",
    "executor",
    "driver",
    "conf",
    "key_column",
    "job_timeout",
    "endpoint",
)
SQL_FIELDS = (
    "server",
    "port",
    "database",
    "schema_",
    "model_table",
    "traffic_table",
    "request_log_table",
    "request_log",
    "ab_key",
    "procedure",
    "auth",
    "encrypt",
    "trust_server_certificate",
)
#: The fields each mode cannot do without, and what each one is.
REQUIRED = {
    "spark": {
        "spark_pool": "the Spark pool that runs the job",
        "storage": "the abfss:// root where packages and jobs are kept",
    },
    "sql": {
        "server": "the dedicated SQL endpoint, e.g. myworkspace.sql.azuresynapse.net",
        "database": "the dedicated SQL pool",
        "auth": "method: sql | entra | integrated",
    },
}

#: Overrides the workspace's development endpoint (e.g. a private link, or a test server).
ENDPOINT_ENV = "TDSP_SYNAPSE_ENDPOINT"


def parse_abfss(uri: str) -> tuple[str, str, str]:
    """(container, account, path without leading '/') of an ``abfss://`` URI; ValueError otherwise."""
    match = _ABFSS.fullmatch(uri) if isinstance(uri, str) else None
    if match is None:
        raise ValueError(
            "must be abfss://<container>@<account>.dfs.core.windows.net/<path> (container: 3-63 "
            "lower-case letters, digits and '-'; account: 3-24 lower-case letters and digits)"
        )
    return match["container"], match["account"], match["path"].strip("/")


def is_abfss(location: str) -> bool:
    return location.startswith("abfss://")


class DataLocation(Strict):
    """Where the job reads or writes: a path (abfss, or local for ``run --local``) or a table.
    A plain string in the manifest stands for ``path:`` (or ``table:`` when it is a table name)."""

    path: str | None = Field(default=None, description="abfss:// URI, or a local path (run --local).")
    table: str | None = Field(default=None, description="Spark table name: [database.]table.")
    format: DataFormat | None = Field(
        default=None, description="parquet | csv | delta (default: by the path's extension; parquet)."
    )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # The published schema takes the plain-string form too, as the loader does.
        return {"anyOf": [{"type": "string"}, handler(core_schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            return location_from_text(data)
        return data

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if is_abfss(value):
            parse_abfss(value)
            return value.rstrip("/")
        if "://" in value:
            raise ValueError("must be an abfss:// URI or a local path")
        base = (info.context or {}).get("base_dir")
        if base is not None and not os.path.isabs(value):
            return os.path.normpath(os.path.join(str(base), value))
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return matching(_TABLE, value, "must be a table name: [database.]table, letters, digits and '_'")

    @model_validator(mode="after")
    def _one_of(self) -> DataLocation:
        if (self.path is None) == (self.table is None):
            raise ValueError("give either path or table")
        return self

    @property
    def resolved_format(self) -> str:
        """The format the job reads or writes: ``format``, else the extension's, else parquet."""
        if self.format:
            return self.format
        if self.path is not None:
            return FORMAT_BY_SUFFIX.get(PurePosixPath(self.path.rstrip("/")).suffix.lower(), "parquet")
        return "parquet"

    @property
    def where(self) -> str:
        return self.path if self.path is not None else f"table {self.table}"

    def job_json(self) -> dict[str, str]:
        """What the job is given: ``path`` or ``table``, and the format."""
        place = {"path": self.path} if self.path is not None else {"table": self.table}
        return {**place, "format": self.resolved_format}  # type: ignore[dict-item]


def location_from_option(text: str, format: str | None = None) -> DataLocation:
    """A location given on the command line (`run --input/--output`): a local path is taken
    from the current folder. ValueError saying what is wrong with it."""
    place: dict[str, Any] = location_from_text(text)
    if "path" in place and not is_abfss(text):
        place["path"] = os.path.abspath(text)
    if format is not None:
        place["format"] = format
    try:
        return DataLocation.model_validate(place)
    except ValidationError as exc:
        raise ValueError("; ".join(error["msg"] for error in exc.errors())) from None


def location_from_text(text: str) -> dict[str, str]:
    """``{"path": text}``, or ``{"table": text}`` when ``text`` is a table name (and no file name
    with a known extension)."""
    suffix = PurePosixPath(text).suffix.lower()
    if _TABLE.fullmatch(text) and suffix not in FORMAT_BY_SUFFIX:
        return {"table": text}
    return {"path": text}


class Executors(Strict):
    size: NodeSize = Field(default="Small", description="Small | Medium | Large | XLarge | XXLarge.")
    count: int = Field(default=2, ge=1, le=200, description="Number of executors.")


class Driver(Strict):
    size: NodeSize = Field(default="Small", description="Small | Medium | Large | XLarge | XXLarge.")


class SynapseTarget(SqlTargetBase):
    """Azure Synapse Analytics: a Spark batch-scoring job, or PREDICT in a dedicated SQL pool."""

    kind: Literal["synapse"]
    workspace: str = Field(description="Synapse workspace name: 1-50 of [a-z0-9-].")
    mode: Literal["spark", "sql"] = Field(
        description="spark (Spark pool batch job) | sql (dedicated SQL pool)."
    )
    inputs: list[Column] = Field(
        min_length=1, description="Input columns, in the order the model takes them."
    )
    outputs: list[Column] = Field(min_length=1, description="Output (prediction) columns, in order.")

    # -- mode: spark --------------------------------------------------------------------------
    spark_pool: str | None = Field(default=None, description="Spark pool: 1-15 letters and digits.")
    storage: str | None = Field(
        default=None,
        description="abfss://container@account.dfs.core.windows.net/path: where packages and jobs go.",
    )
    input: DataLocation | None = Field(default=None, description="Rows to score: path or table.")
    output: DataLocation | None = Field(default=None, description="Where scored rows go: path or table.")
    executor: Executors = Field(default_factory=Executors)
    driver: Driver = Field(default_factory=Driver)
    conf: dict[str, str] = Field(default_factory=dict, description="Spark configuration for the job.")
    key_column: Identifier | None = Field(
        default=None, description="Column whose hash assigns a row to a model version in an A/B split."
    )
    job_timeout: float = Field(default=3600, gt=0, le=7 * 24 * 3600, description="Seconds a job may run.")
    endpoint: str | None = Field(
        default=None,
        description=f"Workspace development endpoint (default https://<workspace>.dev.azuresynapse.net; "
        f"{ENDPOINT_ENV} overrides).",
    )

    # -- mode: sql ----------------------------------------------------------------------------
    server: str | None = Field(
        default=None, description="Dedicated SQL endpoint, e.g. ws.sql.azuresynapse.net."
    )
    port: Port = 1433
    database: Identifier | None = Field(default=None, description="The dedicated SQL pool (database).")
    schema_: Identifier = Field(default="dbo", alias="schema", description="Schema of table and procedure.")
    model_table: Identifier = Field(
        default=sql_target.MODEL_TABLE, description="Table that holds the ONNX models."
    )
    traffic_table: Identifier = Field(
        default=sql_target.TRAFFIC_TABLE, description=sql_target.TRAFFIC_DESCRIPTION
    )
    request_log_table: Identifier = Field(
        default=sql_target.REQUEST_LOG_TABLE,
        description=sql_target.REQUEST_LOG_DESCRIPTION,
    )
    request_log: bool = Field(
        default=True,
        description="Log every row the procedure scores (needed by `ab status` and `ab analyze`).",
    )
    ab_key: Identifier | None = Field(default=None, description=sql_target.AB_KEY_DESCRIPTION)
    procedure: Identifier | None = Field(
        default=None, description="Scoring procedure (default: score_<name>)."
    )
    auth: Auth | None = Field(
        default=None, description="method: sql (username, password_env) | entra | integrated."
    )
    encrypt: bool = True
    trust_server_certificate: bool = False

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        matching(
            _WORKSPACE,
            value,
            "must be the workspace name: 1-50 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
        if "-ondemand" in value:
            raise ValueError("may not contain '-ondemand' (Azure reserves it)")
        return value

    @field_validator("spark_pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        return matching(
            _SPARK_POOL, value, "must be a Spark pool name: 1-15 letters and digits, a letter first"
        )

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None:
            parse_abfss(value)
            return value.rstrip("/")
        return value

    @field_validator("conf")
    @classmethod
    def _conf(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _SPARK_CONF_KEY.fullmatch(key):
                raise ValueError(f"'{key}' is not a Spark configuration key (spark.* or livy.*)")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"^https?://[^\s/?#]+(?:/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL, e.g. https://myworkspace.dev.azuresynapse.net")
        return value.rstrip("/") if value else value

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        return matching(_HOST, value, "must be a host name, e.g. myworkspace.sql.azuresynapse.net")

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> SynapseTarget:
        other = SQL_FIELDS if self.mode == "spark" else SPARK_FIELDS
        stray = [name.rstrip("_") for name in other if name in self.model_fields_set]
        if stray:
            raise ValueError(
                f"{', '.join(stray)} belong(s) to mode: {'sql' if self.mode == 'spark' else 'spark'}; "
                f"remove them, or set mode accordingly"
            )
        missing = [(name, what) for name, what in REQUIRED[self.mode].items() if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"mode: {self.mode} needs " + "; ".join(f"target.{name} ({what})" for name, what in missing)
            )
        if self.mode == "spark":
            names = {c.name.lower() for c in self.inputs}
            clash = [c.name for c in self.outputs if c.name.lower() in names]
            if clash:
                raise ValueError(f"output column(s) {', '.join(clash)} also named as input")
            if self.key_column and self.key_column.lower() in {c.name.lower() for c in self.outputs}:
                raise ValueError("key_column must be an input or passed-through column, not an output")
        return self

    @model_validator(mode="after")
    def _sql_tables_and_key(self) -> SynapseTarget:
        if self.mode != "sql":
            return self
        sql_target.check_tables_and_key(self)
        return self

    # -- derived --------------------------------------------------------------------------------
    def livy_endpoint(self, environ: dict[str, str] | None = None) -> str:
        """The workspace's development endpoint: ``endpoint``, the environment's override, or
        ``https://<workspace>.dev.azuresynapse.net``."""
        env = os.environ if environ is None else environ
        chosen = env.get(ENDPOINT_ENV) or self.endpoint or f"https://{self.workspace}.dev.azuresynapse.net"
        return chosen.rstrip("/")

    def procedure_name(self, endpoint: str) -> str:
        """The scoring procedure's name (sql mode): ``procedure`` or ``score_<endpoint>``."""
        return sql_target.procedure_name(self.procedure, endpoint)
