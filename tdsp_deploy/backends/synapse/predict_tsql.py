"""The T-SQL of the synapse target's sql mode: an ONNX model behind PREDICT in a dedicated SQL pool.

What it adds to the SQL core's T-SQL (sql/schema.py: the three tables and the model insert;
sql/rows.py: the slots, weights, salts and reading rows back; both in the pool's dialect:
ROUND_ROBIN HEAPs without keys or DEFAULTs): a procedure stub then ALTER (no CREATE OR ALTER),
the routing procedure with PREDICT, which writes the request log's rows itself (a dynamic
INSERT grouped by slot), and reading the pool's failed requests. Only the rows change inside
the one transaction of a push.

Nothing from the manifest is written into the text except identifiers that target.py checked
(bracket-quoted here, or as N'...' literals of the checked name) and SQL types from PREDICT's
list. Model name, version, hash, payload and the deployment document are ``?`` parameters.

How the procedure finds its models: rows are keyed by endpoint -- the procedure's own name, an
identifier -- so its text can name them without carrying a manifest value. The traffic table
holds each slot's version, weight and salt; the procedure reads it into a #temp table of routes
and builds one dynamic query: a CTE of rows per route (PREDICT's DATA takes a table, view or CTE
alias, not a subquery), filtered by the rows' key buckets (``bucket_expression``: HASHBYTES
SHA2_256, the pool having no blake2b), one PREDICT per route, UNION ALL. The route numbers are
the only values spliced into that query, and the procedure counts them itself. It then writes
the core's request log (sql/schema.py): a row per slot that answered, its rows counted and
their ab_key values listed.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.document import (
    Statement,
    deployment_document,
    row_values,
    table_statements,
    write_statements,
)
from tdsp_deploy.backends.sql.errors import SCORING_FAILED
from tdsp_deploy.backends.sql.rows import SLOT_TYPE, Tables, assign_slot, q, refresh_active, throw
from tdsp_deploy.backends.sql.schema import INSERT_PARAMETERS
from tdsp_deploy.backends.sql.target import check_identifier
from tdsp_deploy.backends.synapse.sql_connection import SQL_POOL
from tdsp_deploy.backends.synapse.sql_predict_rules import VERSION_COLUMN, _Column, base_type

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

#: What the platform says of this mode (validate, push, render and status repeat it).
PREDICT_NOTICE = (
    "T-SQL PREDICT is off by default and currently unavailable in Synapse dedicated SQL pools "
    "(Microsoft's documentation owners, 2024: MicrosoftDocs/sql-docs pull request 9795); mode: sql "
    "works only on a pool where it is enabled. target.mode: spark scores in every workspace"
)
#: The rows' order in a caller's #temp table: PREDICT answers in no particular order.
ROW_COLUMN = "tdsp_row"
#: The procedure's routes: which slots answer this call, with their share of the key buckets.
ROUTES_TABLE = "#tdsp_routes"
#: The column beside ``model_version`` that names the slot (the A/B variant) that answered.
VARIANT_COLUMN = "variant"
#: A row's key falls in one of this many buckets; a slot's weight (percent) is its number of them.
BUCKETS = 100
#: The statements run inside the one transaction of a deployment (rows only).
TRANSACTION = ("insert_model", "assign_slot", "refresh_active")
SLOT_PARAMETERS = ("endpoint", "slot", "version")


def tables(target: SynapseTarget) -> Tables:
    """The target's tables, keyed by the procedure's name, in the pool's dialect."""
    return Tables.of(target, key="endpoint", dialect=SQL_POOL)


def _literal(name: str) -> str:
    """N'<name>' of a checked identifier (letters, digits, '_': nothing to escape)."""
    return f"N'{check_identifier(name)}'"


def procedure(target: SynapseTarget, endpoint: str) -> str:
    """The procedure's name (not quoted): ``target.procedure`` or ``score_<endpoint>``."""
    return check_identifier(target.procedure_name(endpoint))


def qualified_procedure(target: SynapseTarget, endpoint: str) -> str:
    return f"{q(target.schema_)}.{q(procedure(target, endpoint))}"


# --- the tables (sql/schema.py, in the pool's dialect) ---------------------------------------------
def create_model_table(target: SynapseTarget) -> str:
    return schema.create_model_table(tables(target))


def insert_model(target: SynapseTarget) -> str:
    return schema.insert_model(tables(target))


def create_traffic_table(target: SynapseTarget) -> str:
    return schema.create_traffic_table(tables(target))


def create_request_log_table(target: SynapseTarget) -> str:
    """The core's request log (sql/schema.py): one row per call and slot."""
    return schema.create_request_log_table(tables(target))


# --- the scoring procedure ------------------------------------------------------------------------
def create_procedure_stub(target: SynapseTarget, endpoint: str) -> str:
    """A placeholder when the procedure is missing (ALTER needs an object; there is no CREATE OR ALTER)."""
    name = qualified_procedure(target, endpoint)
    return (
        f"IF OBJECT_ID(N'{name}', N'P') IS NULL\n"
        f"    EXEC (N'CREATE PROCEDURE {name} AS SELECT 1 AS [stub];');\n"
    )


def key_text(column: _Column, alias: str = "s") -> str:
    """A column's value as the text its key hash reads (sql_predict_local.key_text is the same
    in Python): whole numbers in digits, float and real in CONVERT style 2 (16 digits,
    scientific), text as it is; NULL as ''."""
    name = f"{alias}.{q(column.name)}"
    kind = base_type(column.type)
    if kind in ("int", "bigint"):
        text = f"CONVERT(nvarchar(20), {name})"
    elif kind in ("real", "float"):
        text = f"CONVERT(nvarchar(30), CAST({name} AS float), 2)"
    else:
        text = f"CAST({name} AS nvarchar(4000))"
    return f"ISNULL({text}, N'')"


def bucket_expression(target: SynapseTarget, alias: str = "s", salt: str = "r.[salt]") -> str:
    """A row's key bucket, 0 to BUCKETS - 1: the first 4 bytes of SHA2_256 over the salt, '|' and
    the key (``ab_key``, else the inputs joined by '|') as UTF-16 text, read as an unsigned
    number, times BUCKETS, divided by 2^32 -- the local router's fraction-of-the-hash arithmetic.
    (SHA2_256, not the router's blake2b: HASHBYTES offers no blake2b.)"""
    columns = [c for c in target.inputs if c.name.lower() == target.ab_key.lower()] if target.ab_key else []
    key = " + N'|' + ".join(key_text(c, alias) for c in (columns or target.inputs))
    digest = f"HASHBYTES('SHA2_256', {salt} + N'|' + {key})"
    return f"CAST(SUBSTRING({digest}, 1, 4) AS bigint) * {BUCKETS} / CAST(4294967296 AS bigint)"


def dynamic(template: str, **variables: str) -> str:
    """``template`` as a concatenation of N'...' literals (quotes doubled) and the T-SQL variables
    its ``{name}`` fields stand for: the text of a dynamic query."""
    import re

    parts = re.split(r"\{(\w+)\}", template)
    pieces = []
    for index, part in enumerate(parts):
        if index % 2:
            pieces.append(variables[part])
        elif part:
            pieces.append("N'" + part.replace("'", "''") + "'")
    return " + ".join(pieces)


def route_rows_query(target: SynapseTarget) -> str:
    """The dynamic CTE of route ``{k}``: the rows of ``{source}`` whose key bucket falls in the
    route's share. PREDICT takes a table source (table, view, CTE alias), not a subquery."""
    bucket = bucket_expression(target)
    return (
        f"[tdsp_rows_{{k}}] AS (SELECT s.* FROM {{source}} AS s CROSS JOIN {ROUTES_TABLE} AS r\n"
        f"    WHERE r.[n] = {{k}} AND {bucket} BETWEEN r.[low] AND r.[high] - 1)"
    )


def route_predict_query(target: SynapseTarget, endpoint: str, outputs: Sequence[_Column]) -> str:
    """The dynamic SELECT of route ``{k}``: PREDICT with that route's model on its rows, and the
    version and slot beside each answer."""
    table = tables(target).models
    columns = ", ".join(f"{q(c.name)} {c.type}" for c in outputs)
    model = (
        f"SELECT m.[payload] FROM {table} AS m JOIN {ROUTES_TABLE} AS r ON m.[version] = r.[version]\n"
        f"    WHERE m.[endpoint] = {_literal(procedure(target, endpoint))} AND r.[n] = {{k}}"
    )
    return (
        f"SELECT d.*, p.*, r.[version] AS {q(VERSION_COLUMN)}, r.[slot] AS {q(VARIANT_COLUMN)}\n"
        f"FROM PREDICT(MODEL = ({model}),\n"
        f"             DATA = [tdsp_rows_{{k}}] AS d, RUNTIME = ONNX)\n"
        f"WITH ({columns}) AS p\n"
        f"CROSS JOIN {ROUTES_TABLE} AS r\n"
        f"WHERE r.[n] = {{k}}"
    )


def keys_expression(key: str | None) -> str:
    """A slot's rows' keys as the request log keeps them (sql/schema.py), ``key`` being the text
    of a row's ab_key (key_text): a JSON list of those texts -- quotes and backslashes escaped
    by REPLACE, as the pool has no STRING_ESCAPE -- or NULL without ab_key (PREDICT's rows have
    no order to number them by)."""
    if key is None:
        return "CAST(NULL AS nvarchar(max))"
    text = f"REPLACE(REPLACE({key}, N'\\', N'\\\\'), N'\"', N'\\\"')"
    return f"N'[' + STRING_AGG(CAST(N'\"' + {text} + N'\"' AS nvarchar(max)), N',') + N']'"


def ab_key_text(target: SynapseTarget) -> str | None:
    """The text of a row's ab_key (key_text), None without one."""
    columns = [c for c in target.inputs if target.ab_key and c.name.lower() == target.ab_key.lower()]
    return key_text(columns[0]) if columns else None


def request_log_query(target: SynapseTarget, endpoint: str) -> str:
    """The dynamic INSERT of the request log (log_insert) for this target."""
    return log_insert(
        tables(target).requests, procedure(target, endpoint), ab_key_text(target), bucket_expression(target)
    )


def log_insert(log: str, endpoint: str, key: str | None, bucket: str) -> str:
    """The dynamic INSERT of the request log: a row per slot that answered (sql/schema.py), the
    rows of ``{source}`` counted by the route their key ``bucket`` chose (as the scoring query
    chose it), their ``key`` texts, and the call's time per row (one query scores every slot:
    the pool cannot time them apart). Its parameters: @request_id, @status, @elapsed_ms,
    @pinned, @error."""
    return (
        f"INSERT INTO {log} ({schema.request_log_columns()})\n"
        f"SELECT {_literal(endpoint)}, GETUTCDATE(), @request_id, r.[slot], r.[version], @status, COUNT(*),\n"
        f"    @elapsed_ms * 1.0 / SUM(COUNT(*)) OVER (), {keys_expression(key)}, @pinned, LEFT(@error, 2000)\n"
        f"FROM {{source}} AS s JOIN {ROUTES_TABLE} AS r ON {bucket} BETWEEN r.[low] AND r.[high] - 1\n"
        "GROUP BY r.[slot], r.[version];"
    )


def log_block(log: str) -> str:
    """The procedure's lines that run the request log's INSERT (``log``: its dynamic text)."""
    return f"""    -- A row per slot that answered into the request log (status 500 when the query failed),
    -- then the failure, with the pool's message, to the caller.
    DECLARE @log nvarchar(max) = {log};
    DECLARE @elapsed_ms float, @pinned bit = CASE WHEN @slot IS NULL THEN 0 ELSE 1 END;
    SET @elapsed_ms = DATEDIFF(millisecond, @started, GETUTCDATE());
    EXEC sp_executesql @log,
        N'@request_id nvarchar(64), @status int, @elapsed_ms float, @pinned bit, @error nvarchar(2048)',
        @request_id = @request_id, @status = @status, @elapsed_ms = @elapsed_ms, @pinned = @pinned,
        @error = @error;
"""


def query_label(target: SynapseTarget, endpoint: str) -> str:
    """The LABEL of the procedure's scoring query (sys.dm_pdw_exec_requests.label): letters,
    digits and '_' only, as the pool allows."""
    return "tdsp_" + procedure(target, endpoint)


def alter_procedure(target: SynapseTarget, endpoint: str, outputs: Sequence[_Column]) -> str:
    """``EXEC <procedure> @input_table = N'[schema.]table'`` scores that table's (or view's, or
    #temp table's) rows: every column of it, the outputs, the model version and the slot
    (``variant``) that answered. ``@slot`` pins a slot (every row); otherwise each row goes to
    the slot whose share of the key buckets holds its key's bucket (bucket_expression), the
    slots taken in name order with their weights. One PREDICT per slot, joined by UNION ALL.

    The table name is split with PARSENAME and each part QUOTENAMEd before it joins the dynamic
    query; the query's other variable parts are route numbers the procedure counts itself."""
    traffic = tables(target).traffic
    key = _literal(procedure(target, endpoint))
    rows = dynamic(route_rows_query(target), k="@k", source="@source")
    scored = dynamic(route_predict_query(target, endpoint, outputs), k="@k")
    cumulative = "SUM([weight]) OVER (ORDER BY [slot] ROWS UNBOUNDED PRECEDING)"
    name = qualified_procedure(target, endpoint)
    logged = ""
    if target.request_log:
        log = dynamic(request_log_query(target, endpoint), source="@source")
        logged = log_block(log)
    return f"""ALTER PROCEDURE {name} @input_table nvarchar(256), @slot {SLOT_TYPE} = NULL,
    @request_id nvarchar(64) = NULL
AS
BEGIN
    SET NOCOUNT ON;
    IF @request_id IS NULL
        SET @request_id = CONVERT(nvarchar(64), NEWID());
    IF PARSENAME(@input_table, 1) IS NULL OR PARSENAME(@input_table, 3) IS NOT NULL
        {throw(50006)}
    IF OBJECT_ID(N'tempdb..{ROUTES_TABLE}') IS NOT NULL
        DROP TABLE {ROUTES_TABLE};
    -- Who answers: the slot @slot pins, with every bucket; else each slot with a weight, with
    -- the buckets [low, high) of its share, the slots in name order.
    CREATE TABLE {ROUTES_TABLE} WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS
    SELECT [slot], [version], ISNULL([salt], N'') AS [salt], ROW_NUMBER() OVER (ORDER BY [slot]) AS [n],
        CASE WHEN @slot IS NULL THEN {cumulative} - [weight] ELSE 0 END AS [low],
        CASE WHEN @slot IS NULL THEN {cumulative} ELSE {BUCKETS} END AS [high]
    FROM {traffic}
    WHERE [endpoint] = {key} AND ([slot] = @slot OR (@slot IS NULL AND [weight] > 0));
    DECLARE @count int;
    SET @count = (SELECT COUNT(*) FROM {ROUTES_TABLE});
    IF @count = 0
        {throw(50003)}
    DECLARE @source nvarchar(300) = CASE WHEN PARSENAME(@input_table, 2) IS NULL
        THEN QUOTENAME(PARSENAME(@input_table, 1))
        ELSE QUOTENAME(PARSENAME(@input_table, 2)) + N'.' + QUOTENAME(PARSENAME(@input_table, 1)) END;
    DECLARE @rows nvarchar(max) = N'', @scored nvarchar(max) = N'', @n int = 1, @k nvarchar(10);
    WHILE @n <= @count
    BEGIN
        SET @k = CAST(@n AS nvarchar(10));
        SET @rows = @rows + CASE WHEN @n = 1 THEN N'WITH ' ELSE N',' + NCHAR(10) END
            + {rows};
        SET @scored = @scored + CASE WHEN @n = 1 THEN N'' ELSE NCHAR(10) + N'UNION ALL' + NCHAR(10) END
            + {scored};
        SET @n = @n + 1;
    END;
    DECLARE @query nvarchar(max) = @rows + NCHAR(10) + @scored + NCHAR(10)
        + N'OPTION (LABEL = N''{query_label(target, endpoint)}'');';
    DECLARE @started datetime2 = GETUTCDATE(), @status int = 200, @error nvarchar(2048);
    BEGIN TRY
        EXEC sp_executesql @query;
    END TRY
    BEGIN CATCH
        SET @status = 500;  -- one variable per SET: the pool assigns no two in one SELECT
        SET @error = ERROR_MESSAGE();
    END CATCH;
{logged}    DROP TABLE {ROUTES_TABLE};
    IF @status = 500
    BEGIN
        SET @error = LEFT(N'tdsp-{SCORING_FAILED}: ' + @error, 2048);
        THROW {SCORING_FAILED}, @error, 1;
    END;
END;
"""


def drop_procedure(target: SynapseTarget, endpoint: str) -> str:
    name = qualified_procedure(target, endpoint)
    return f"IF OBJECT_ID(N'{name}', N'P') IS NOT NULL\n    DROP PROCEDURE {name};\n"


def drop_table_if_empty(target: SynapseTarget, table: str | None = None) -> str:
    """Undo of a table a failed first push created (the model table, or the one named):
    dropped only when no row of any endpoint is in it."""
    table = table or tables(target).models
    return (
        f"IF OBJECT_ID(N'{table}', N'U') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table})\n"
        f"    DROP TABLE {table};\n"
    )


def failed_requests(limit: int = 200) -> str:
    """Parameters: the procedure's query label, a LIKE pattern of its name. The pool's failed
    requests that ran the procedure (its EXEC, or its labelled scoring query), each with the
    pool's error text, newest first; not this session's own. The user needs VIEW DATABASE STATE.
    Columns as documented for sys.dm_pdw_exec_requests and sys.dm_pdw_errors."""
    return f"""SELECT TOP ({int(limit)}) r.[request_id], r.[submit_time], r.[status], r.[command], e.[details]
FROM sys.dm_pdw_exec_requests AS r
LEFT JOIN sys.dm_pdw_errors AS e ON e.[request_id] = r.[request_id]
WHERE r.[status] = N'Failed' AND r.[session_id] <> SESSION_ID()
    AND (r.[label] = ? OR r.[command] LIKE ?)
ORDER BY r.[submit_time] DESC;
"""


def failed_requests_parameters(target: SynapseTarget, endpoint: str) -> tuple[str, str]:
    """The label and the LIKE pattern (its '_' matched literally) of the procedure's requests."""
    name = procedure(target, endpoint).replace("_", "[_]")
    return query_label(target, endpoint), f"%{name}%"


# --- everything, in order -----------------------------------------------------------------------------
def deployment_statements(
    target: SynapseTarget, endpoint: str, outputs: Sequence[_Column]
) -> list[Statement]:
    """The batches of a deployment in execution order; TRANSACTION names those run in one
    transaction, the others are DDL the pool runs outside any user transaction."""
    created = table_statements(target, create_model_table, create_traffic_table, create_request_log_table)
    return [
        *created,
        Statement("create_procedure_stub", create_procedure_stub(target, endpoint)),
        Statement("insert_model", insert_model(target), INSERT_PARAMETERS),
        Statement("assign_slot", assign_slot(tables(target)), SLOT_PARAMETERS),
        Statement("refresh_active", refresh_active(tables(target)), ("endpoint",)),
        Statement("alter_procedure", alter_procedure(target, endpoint, outputs)),
    ]


def parameter_values(
    target: SynapseTarget,
    manifest: ManifestBase,
    lock: PackageLock,
    payload: bytes,
    *,
    source: str,
    slot: str = "blue",
) -> dict[str, Any]:
    """The values of the named parameters (sql/document.row_values), and the endpoint's key."""
    document = deployment_document(target, manifest, lock, payload=source)
    values = row_values(manifest, lock, payload, flavor="onnx", document=document, slot=slot)
    return {**values, "endpoint": procedure(target, manifest.name)}


def render_tsql(
    target: SynapseTarget,
    manifest: ManifestBase,
    lock: PackageLock,
    payload: bytes,
    out_dir: Path,
    *,
    source: str,
) -> list[Path]:
    """``NN-<statement>.sql`` in execution order, ``model.onnx`` (the payload exactly as
    inserted), ``parameters.json`` (each statement's parameters in order, which statements share
    the transaction) and ``score-example.sql`` (how to score a table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slot = manifest.rollout.deployment or "blue"  # a push takes the slot without traffic
    values = parameter_values(target, manifest, lock, payload, source=source, slot=slot)
    statements = deployment_statements(target, manifest.name, target.outputs)
    written, listing = write_statements(out, statements, values, "model.onnx")
    in_transaction = [p.name for p, s in zip(written, statements, strict=True) if s.name in TRANSACTION]
    model = out / "model.onnx"
    model.write_bytes(payload)
    parameters = out / "parameters.json"
    document = {"statements": listing, "one_transaction": in_transaction, "payload_sha256": values["sha256"]}
    parameters.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    example = out / "score-example.sql"
    name = qualified_procedure(target, manifest.name)
    example.write_text(
        "".join(f"-- {line}\n" for line in textwrap.wrap("Note: " + PREDICT_NOTICE + ".", 96))
        + f"-- Score the rows of a table or view (columns: {', '.join(c.name for c in target.inputs)}):\n"
        f"EXEC {name} @input_table = N'dbo.my_table';\n"
        "-- The same rows, every one scored by one slot (its model version), whatever the split:\n"
        f"EXEC {name} @input_table = N'dbo.my_table', @slot = N'{slot}';\n",
        encoding="utf-8",
        newline="\n",
    )
    return [*written, model, parameters, example]
