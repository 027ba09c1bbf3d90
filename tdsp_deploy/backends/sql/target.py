"""What the SQL targets' schemas share: identifiers, SQL types, columns, authentication, and
the fields that say where the tables and the procedure live and how to connect.

Everything that ends up in T-SQL text is checked here: identifiers (schema, table, procedure,
column names) against a strict pattern, SQL types against an allow-list. Every other value is
sent as a parameter.

Passwords never stand in the manifest: ``auth.password_env`` names the environment variable
that holds it, read when connecting. A ``password`` key is refused, even as ``${VAR}``: the
loader substitutes references before validation, so the schema could not tell a reference
from a password typed in clear.

This module imports only pydantic and the standard library (``validate`` and ``schema`` load it).
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import AfterValidator, Field, field_validator, model_validator

from tdsp_deploy.manifest.model import ENV_VAR_NAME, Strict

MAX_IDENTIFIER = 128  # sysname
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

#: Names the generated procedures and script use themselves: a column may not take them.
RESERVED_COLUMNS = frozenset(
    {
        "model_bytes",
        "model_bundle",
        "model_version",
        "input_query",
        "payload",
        "version",
        "routes",
        "request_log",
        "request_id",
        "slot",
        "InputDataSet",
        "OutputDataSet",
    }
)
#: Column names starting with this are the generated code's own.
RESERVED_PREFIX = "tdsp_"

# The allow-list of SQL types for inputs and outputs, lower case, normalized by _sql_type.
_SIMPLE_TYPES = frozenset(
    {"float", "real", "int", "bigint", "smallint", "tinyint", "bit", "datetime2", "date"}
)
_DECIMAL = re.compile(r"^(?:decimal|numeric)\((\d{1,2})(?:,(\d{1,2}))?\)$")
_STRING = re.compile(r"^(n?varchar)\((max|\d{1,4})\)$")


def check_identifier(name: str) -> str:
    """``name`` if it is a safe SQL Server identifier: letters, digits, '_', not a digit first,
    at most 128 characters. ValueError otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"must be an identifier of 1-{MAX_IDENTIFIER} letters, digits and '_', not a digit first"
        )
    return name


_Text = TypeVar("_Text", str, None)


def matching(pattern: re.Pattern[str], value: _Text, message: str) -> _Text:
    """``value`` if it is None or ``pattern`` matches all of it; ValueError(``message``) otherwise."""
    if value is not None and not pattern.fullmatch(value):
        raise ValueError(message)
    return value


def quote_identifier(name: str) -> str:
    """``[name]``, with ``]`` doubled (QUOTENAME). Callers pass checked identifiers; the doubling
    keeps even an unchecked one from closing the bracket."""
    if len(name) > MAX_IDENTIFIER or "\0" in name:
        raise ValueError(f"not an identifier: {name!r}")
    return "[" + name.replace("]", "]]") + "]"


def sql_type(value: str) -> str:
    """The normalized SQL type (lower case, no blanks) if it is on the allow-list; ValueError."""
    text = re.sub(r"\s+", "", str(value)).lower()
    if text in _SIMPLE_TYPES:
        return text
    match = _DECIMAL.fullmatch(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        if not 1 <= precision <= 38 or scale > precision:
            raise ValueError("decimal(p,s) needs 1 <= p <= 38 and 0 <= s <= p")
        return f"decimal({precision},{scale})"
    match = _STRING.fullmatch(text)
    if match:
        kind, size = match.groups()
        limit = 4000 if kind == "nvarchar" else 8000
        if size != "max" and not 1 <= int(size) <= limit:
            raise ValueError(f"{kind}(n) needs 1 <= n <= {limit}, or {kind}(max)")
        return f"{kind}({size})"
    raise ValueError(
        "unsupported SQL type; use one of float, real, int, bigint, smallint, tinyint, bit, "
        "decimal(p,s), nvarchar(n|max), varchar(n|max), datetime2, date"
    )


Identifier = Annotated[str, AfterValidator(check_identifier)]
SqlType = Annotated[str, AfterValidator(sql_type)]


class Column(Strict):
    """One column of the scoring procedure's input or output."""

    name: Identifier = Field(description="Column name (letters, digits, '_').")
    type: SqlType = Field(description="SQL type, e.g. float, int, nvarchar(32), decimal(10,2).")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() in {r.lower() for r in RESERVED_COLUMNS} or value.lower().startswith(
            RESERVED_PREFIX
        ):
            raise ValueError(f"'{value}' is used by the generated procedure; rename the column")
        if keyword.iskeyword(value):
            raise ValueError(f"'{value}' is a Python keyword and cannot be bound in the scoring script")
        return value


class SqlAuth(Strict):
    """SQL Server authentication: a login and a password taken from the environment."""

    # A refused value may be a password: pydantic's messages must not repeat it.
    model_config = Strict.model_config | {"hide_input_in_errors": True}

    method: Literal["sql"]
    username: str = Field(min_length=1, max_length=128)
    password_env: str = Field(description="Name of the environment variable that holds the password.")

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_manifest(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            # The value is never repeated: it may be the password itself.
            raise ValueError(
                "a password may not stand in the manifest (not even as ${VAR}); write "
                "password_env: NAME, naming the environment variable that holds it"
            )
        return data

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return matching(
            ENV_VAR_NAME,
            value,
            "must name an environment variable (letters, digits, '_', not a digit first), "
            "e.g. password_env: SQL_PASSWORD",
        )


class EntraAuth(Strict):
    """Microsoft Entra ID, with the credential the environment provides (DefaultAzureCredential)."""

    method: Literal["entra"]


class IntegratedAuth(Strict):
    """Windows / Kerberos integrated authentication of the current user."""

    method: Literal["integrated"]


Auth = Annotated[Union[SqlAuth, EntraAuth, IntegratedAuth], Field(discriminator="method")]  # noqa: UP007


Port = Annotated[int, Field(ge=1, le=65535)]
#: the default names of the three tables, shared by every endpoint of a schema
MODEL_TABLE = "tdsp_models"
TRAFFIC_TABLE = "tdsp_traffic"
REQUEST_LOG_TABLE = "tdsp_requests"
TRAFFIC_DESCRIPTION = "Deployment slots: each one's model version and traffic weight."
REQUEST_LOG_DESCRIPTION = "One row per call and slot (its rows, status, keys), read by `ab` and `logs`."
AB_KEY_DESCRIPTION = (
    "Input column whose value picks a row's slot under a traffic split (default: all input values); "
    "the same key always reaches the same slot while the split holds."
)


class SqlTargetBase(Strict):
    """What both SQL targets' models share beyond their fields: the ``schema`` alias, passwords
    kept out of error messages, and input and output columns each named once."""

    model_config = Strict.model_config | {"populate_by_name": True, "hide_input_in_errors": True}

    @field_validator("inputs", "outputs", check_fields=False)
    @classmethod
    def _unique(cls, columns: list[Column]) -> list[Column]:
        seen: set[str] = set()
        for column in columns:
            if column.name.lower() in seen:  # SQL Server and Spark compare names without case
                raise ValueError(f"column '{column.name}' is listed twice")
            seen.add(column.name.lower())
        return columns


def check_tables_and_key(target: Any) -> None:
    """The ab_key is one of the inputs, and the three tables are three."""
    if target.ab_key is not None and target.ab_key.lower() not in {c.name.lower() for c in target.inputs}:
        raise ValueError(f"ab_key: '{target.ab_key}' is not one of the inputs")
    names = {target.model_table.lower(), target.traffic_table.lower(), target.request_log_table.lower()}
    if len(names) != 3:
        raise ValueError("model_table, traffic_table and request_log_table must be three different tables")


def procedure_name(procedure: str | None, endpoint: str) -> str:
    """The scoring procedure's name: ``procedure`` or ``score_<endpoint>`` ('-' as '_')."""
    return procedure or "score_" + endpoint.replace("-", "_")
