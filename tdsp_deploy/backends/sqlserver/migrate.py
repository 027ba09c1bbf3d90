"""Bringing a database made by an earlier tdsp-deploy to the one schema (sql/schema.py).

Earlier versions keyed the sqlserver target's rows by the model's name (``[name]`` in the three
tables) and bound each scoring procedure to it through the extended property
``tdsp_model_name``. Now rows are keyed by ``[endpoint]``, the procedure's name, as on the
dedicated SQL pool. On a push, when the model table exists without ``[endpoint]``, one
transaction (SQL Server runs DDL inside one, so a failure leaves the database as it was):

1. ``migrate_tables``: each table gets ``[endpoint]``, filled from the deployment document kept
   with each model row (``JSON_VALUE([manifest], '$.procedure')``); the traffic table and the
   request log take it from the model rows of the same model name, and drop ``[name]``; the
   primary keys, which SQL Server named itself, are found in ``sys.key_constraints`` and rebuilt
   on the new key through dynamic SQL (a column added in a batch cannot be named by that
   batch's own compiled statements, hence ``EXEC`` throughout).
2. Every procedure that still reads the extended property (other endpoints' too: the tables are
   shared) is rewritten as the current generator writes it, naming its rows by its endpoint, and
   the property is dropped. The rewrite replaces the earlier generator's exact lines; a
   definition that does not hold them is refused rather than guessed at.

Earlier versions also gave the request log an ``[id]`` (IDENTITY, the primary key), which the
one log of both engines (sql/schema.py) does not have: its rows were already one per call and
slot, with the same columns and meaning otherwise, so ``migrate_request_log`` converts the table
in place, in its own transaction: the key and ``[id]`` go, the rows stay. The DEFAULT on
``[t]`` stays, so that the procedures of endpoints not pushed since, which leave the time to
it, keep logging.
"""

from __future__ import annotations

from typing import Any

from tdsp_deploy.backends.sql.rows import Tables, tagged
from tdsp_deploy.backends.sql.target import check_identifier
from tdsp_deploy.errors import BackendError

#: the extended property earlier versions bound each procedure to its model with
MODEL_NAME_PROPERTY = "tdsp_model_name"


def _text(name: str) -> str:
    """An N'...' literal of a table's qualified, bracket-quoted name (checked identifiers)."""
    return "N'" + name.replace("'", "''") + "'"


def _in_exec(sql: str) -> str:
    """``EXEC(N'...')`` of a statement, its quotes doubled."""
    return "EXEC(N'" + sql.replace("'", "''") + "');"


def _probe(name: str, table: str, column: str, test: str) -> str:
    """1 when ``table`` exists and ``COL_LENGTH`` of ``column`` ``test`` (IS NULL: it lacks the
    column; IS NOT NULL: it has it), else 0."""
    return tagged(
        name,
        f"SELECT CASE WHEN OBJECT_ID({_text(table)}, N'U') IS NOT NULL "
        f"AND COL_LENGTH({_text(table)}, N'{column}') {test} THEN 1 ELSE 0 END AS [earlier];\n",
    )


def probe_schema(t: Tables) -> str:
    """1 when the model table exists without ``[endpoint]`` (a database of an earlier version)."""
    return _probe("probe_schema", t.models, "endpoint", "IS NULL")


def _drop_primary_key(table: str) -> list[str]:
    """The steps that drop ``table``'s primary key, whose name the server chose (needs the
    batch's ``@pk sysname, @sql nvarchar(max)``)."""
    return [
        f"SET @pk = (SELECT [name] FROM sys.key_constraints WHERE [type] = 'PK' "
        f"AND [parent_object_id] = OBJECT_ID({_text(table)}));",
        f"SET @sql = N'ALTER TABLE {table.replace(chr(39), chr(39) * 2)} DROP CONSTRAINT ' + QUOTENAME(@pk) + N';';",
        "IF @pk IS NOT NULL EXEC(@sql);",
    ]


def _rekey(table: str, key: str, fill: str, *, drop_name: bool, primary: str | None) -> str:
    """Add ``[endpoint]`` to ``table``, fill it, make it NOT NULL; rebuild the primary key
    (``primary``: its new columns) and drop ``[name]`` when asked."""
    steps = [
        _in_exec(f"ALTER TABLE {table} ADD [endpoint] nvarchar(128) NULL;"),
        _in_exec(fill),
        _in_exec(f"ALTER TABLE {table} ALTER COLUMN [endpoint] nvarchar(128) NOT NULL;"),
    ]
    if primary is not None:
        steps += _drop_primary_key(table)
    if drop_name:
        steps.append(_in_exec(f"ALTER TABLE {table} DROP COLUMN [name];"))
    if primary is not None:
        steps.append(_in_exec(f"ALTER TABLE {table} ADD PRIMARY KEY ({primary});"))
    body = "\n    ".join(steps)
    return f"IF OBJECT_ID({_text(table)}, N'U') IS NOT NULL AND COL_LENGTH({_text(table)}, N'{key}') IS NULL\nBEGIN\n    {body}\nEND;\n"


def migrate_tables(t: Tables) -> str:
    """The three tables, from ``[name]`` to ``[endpoint]`` (see the module's first lines)."""
    by_name = (
        f"COALESCE((SELECT MIN(m.[endpoint]) FROM {t.models} AS m WHERE m.[name] = x.[name]), x.[name])"
    )
    models = _rekey(
        t.models,
        "endpoint",
        f"UPDATE {t.models} SET [endpoint] = COALESCE(JSON_VALUE([manifest], '$.procedure'), [name]);",
        drop_name=False,
        primary="[endpoint], [version]",
    )
    traffic = _rekey(
        t.traffic,
        "endpoint",
        f"UPDATE x SET [endpoint] = {by_name} FROM {t.traffic} AS x;",
        drop_name=True,
        primary="[endpoint], [slot]",
    )
    requests = _rekey(
        t.requests,
        "endpoint",
        f"UPDATE x SET [endpoint] = {by_name} FROM {t.requests} AS x;",
        drop_name=True,
        primary=None,
    )
    return tagged("migrate_tables", f"DECLARE @pk sysname, @sql nvarchar(max);\n{models}{traffic}{requests}")


def bound_procedures() -> str:
    """Rows (schema, procedure) of every procedure with the earlier versions' property."""
    return tagged(
        "bound_procedures",
        "SELECT OBJECT_SCHEMA_NAME([major_id]) AS [schema_name], OBJECT_NAME([major_id]) AS [procedure_name] "
        f"FROM sys.extended_properties WHERE [class] = 1 AND [minor_id] = 0 AND [name] = N'{MODEL_NAME_PROPERTY}';\n",
    )


def unbind(schema: str, procedure: str) -> str:
    """Drop the property from one procedure (checked identifiers only)."""
    return tagged(
        "unbind_model_name",
        f"EXEC sys.sp_dropextendedproperty @name = N'{MODEL_NAME_PROPERTY}', "
        f"@level0type = N'SCHEMA', @level0name = N'{check_identifier(schema)}', "
        f"@level1type = N'PROCEDURE', @level1name = N'{check_identifier(procedure)}';\n",
    )


#: the earlier generator's lines, each with what the current one writes in its place ({endpoint}:
#: the procedure's endpoint as an N'...' literal); the lookup through the property goes
_EARLIER_LINES = (
    (
        "    DECLARE @model_name nvarchar(128), @routes nvarchar(max),",
        "    DECLARE @endpoint nvarchar(128) = {endpoint};\n    DECLARE @routes nvarchar(max),",
    ),
    (
        f"    -- The model this procedure serves: its extended property {MODEL_NAME_PROPERTY}.\n"
        "    SELECT @model_name = CAST([value] AS nvarchar(128))\n"
        "    FROM sys.extended_properties\n"
        "    WHERE [class] = 1 AND [major_id] = @@PROCID AND [minor_id] = 0 "
        f"AND [name] = N'{MODEL_NAME_PROPERTY}';\n",
        "",
    ),
    ("    WHERE [name] = @model_name AND ([slot]", "    WHERE [endpoint] = @endpoint AND ([slot]"),
    (" AS m ON m.[name] = @model_name AND ", " AS m ON m.[endpoint] = @endpoint AND "),
)
#: the request log's lines (only when the procedure logs requests): the current ones name the
#: time, which the log table no longer defaults
_EARLIER_LOG = (
    (
        "\n        ([name], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], "
        "[pinned], [message])\n    SELECT @model_name, @request_id, [slot], [version], [status], [row_count], "
        "[latency_ms], [row_keys],\n        CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]",
        "\n        ([endpoint], [t], [request_id], [slot], [version], [status], [row_count], [latency_ms], "
        "[row_keys], [pinned], [message])\n    SELECT @endpoint, SYSUTCDATETIME(), @request_id, [slot], "
        "[version], [status], [row_count], [latency_ms],\n        [row_keys], CASE WHEN @slot IS NULL THEN 0 "
        "ELSE 1 END, [message]",
    ),
)


def rewrite_procedure(definition: str, endpoint: str) -> str:
    """An earlier procedure's definition as the current generator writes it: keyed by
    ``endpoint``, which its text names, instead of the model name in the property. Refused when
    the definition does not hold the earlier lines exactly once each."""
    literal = f"N'{check_identifier(endpoint)}'"
    logs = _EARLIER_LOG[0][0] in definition
    text = definition
    for earlier, now in _EARLIER_LINES + (_EARLIER_LOG if logs else ()):
        if text.count(earlier) != 1:
            raise BackendError(
                "cannot migrate this database: a procedure bound to its model by the extended property "
                f"{MODEL_NAME_PROPERTY} is not as tdsp-deploy wrote it",
                hint="re-push that endpoint with the tdsp-deploy version that made it, or drop the procedure",
            )
        text = text.replace(earlier, now.format(endpoint=literal))
    if "@model_name" in text:
        raise BackendError(
            "cannot migrate this database: a procedure bound to its model by the extended property "
            f"{MODEL_NAME_PROPERTY} uses it where tdsp-deploy did not",
            hint="re-push that endpoint with the tdsp-deploy version that made it, or drop the procedure",
        )
    return text


def endpoint_of(procedure: str, bound: set[str]) -> str:
    """The endpoint a bound procedure serves: its own name, or its batch twin's for ``<x>_row``."""
    if procedure.endswith("_row") and procedure[: -len("_row")] in bound:
        return procedure[: -len("_row")]
    return procedure


def probe_request_log(t: Tables) -> str:
    """1 when the request log exists with the earlier versions' ``[id]``."""
    return _probe("probe_request_log", t.requests, "id", "IS NOT NULL")


def migrate_request_log(t: Tables) -> str:
    """The request log without its primary key and ``[id]``."""
    body = "\n    ".join([*_drop_primary_key(t.requests), _in_exec(f"ALTER TABLE {t.requests} DROP COLUMN [id];")])
    return tagged(
        "migrate_request_log",
        f"DECLARE @pk sysname, @sql nvarchar(max);\nIF COL_LENGTH({_text(t.requests)}, N'id') IS NOT NULL\n"
        f"BEGIN\n    {body}\nEND;\n",
    )


def migrate(conn: Any, t: Tables, create_or_alter: Any, tell: Any) -> bool:
    """Migrate when the database is an earlier version's; True when it did. ``conn`` is the
    backend's SqlConnection; ``create_or_alter`` turns a stored definition into its CREATE OR
    ALTER form."""
    keyed = _earlier(conn, probe_schema(t), "check the tables' schema")
    if keyed:
        _key_by_endpoint(conn, t, create_or_alter, tell)
    if not _earlier(conn, probe_request_log(t), "check the request log's schema"):
        return keyed
    tell("migrate", "converting the request log to the one shape of both SQL targets (its [id] goes)")
    with conn.transaction():
        conn.execute(migrate_request_log(t), doing="migrate the request log")
    return True


def _earlier(conn: Any, probe: str, doing: str) -> bool:
    found = conn.execute(probe, doing=doing)
    return bool(found and found[0][0])


def _key_by_endpoint(conn: Any, t: Tables, create_or_alter: Any, tell: Any) -> None:
    tell("migrate", "moving the model, traffic and request log tables from [name] to [endpoint]")
    with conn.transaction():
        conn.execute(migrate_tables(t), doing="migrate the tables")
        rows = conn.execute(bound_procedures(), doing="list the bound procedures")
        bound = {str(p) for _, p in rows}
        for schema, procedure in rows:
            qualified = f"[{check_identifier(str(schema))}].[{check_identifier(str(procedure))}]"
            found = conn.execute(
                "SELECT OBJECT_DEFINITION(OBJECT_ID(?))", (qualified,), doing="read the procedure"
            )
            definition = found[0][0] if found else None
            if definition is not None:
                rewritten = rewrite_procedure(str(definition), endpoint_of(str(procedure), bound))
                conn.execute(create_or_alter(rewritten), doing="rewrite the procedure")
            conn.execute(unbind(str(schema), str(procedure)), doing="drop the model-name property")
