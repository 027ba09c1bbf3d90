"""Bringing a pool's request log made by an earlier tdsp-deploy to the one shape (sql/schema.py).

Earlier versions logged a row per scored row on the pool (``row_key``: the row's ab_key text,
``latency_ms``: the call's time per row, no count, no message). The one log keeps a row per
call and slot. The earlier rows are converted, not dropped, so that an A/B test or a rollout
running across the upgrade keeps what it collected; the earlier table is kept, renamed aside to
``<log>_rows``, for whoever wants to check the conversion (drop it when done). A dedicated SQL
pool runs no DDL inside a user transaction, so the steps are each idempotent and a later
connection finishes what a failed one left (the probe tells where it stopped):

1. ``<log>_calls`` is created in the one shape (if missing), and in ONE transaction emptied and
   filled from the earlier rows grouped by call and slot (row count, mean time per row, the
   keys as a JSON list, as the current procedure writes them);
2. ``RENAME OBJECT``: the earlier log to ``<log>_rows``, then ``<log>_calls`` to the log's name;
3. every procedure that still writes the earlier rows (other endpoints' too: the log is shared)
   is altered to write the one shape: its request log lines are replaced by what the current
   generator writes, from the key and bucket expressions it holds. A definition without the
   earlier lines exactly once is refused rather than guessed at.
"""

from __future__ import annotations

import re
from typing import Any

from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.rows import Tables, q, tagged
from tdsp_deploy.backends.sql.target import check_identifier
from tdsp_deploy.errors import BackendError

#: what the earlier pool procedure's request log lines look like (quotes doubled: they are the
#: text of a dynamic query); the table, endpoint, key and bucket expressions are carried over
_EARLIER_BLOCK = re.compile(
    r"    -- Every scored row into the request log \(status 500 when the query failed\), then the\n"
    r"    -- failure, with the pool's message, to the caller\.\n"
    r"    DECLARE @log nvarchar\(max\) = N'INSERT INTO (?P<log>\[\w+\]\.\[\w+\]) \(\[endpoint\], \[t\], "
    r"\[request_id\], \[slot\], \[version\], \[status\], \[row_key\], \[latency_ms\], \[pinned\]\)\n"
    r"SELECT N''(?P<endpoint>\w+)'', GETUTCDATE\(\), @request_id, r\.\[slot\], r\.\[version\], @status, "
    r"(?P<key>.+?) AS \[row_key\],\n"
    r"    @elapsed_ms \* 1\.0 / COUNT\(\*\) OVER \(\), @pinned\n"
    r"FROM ' \+ @source \+ N' AS s JOIN #tdsp_routes AS r ON (?P<bucket>.+?) BETWEEN r\.\[low\] AND "
    r"r\.\[high\] - 1;';\n"
    r"    DECLARE @elapsed_ms float, @pinned bit = CASE WHEN @slot IS NULL THEN 0 ELSE 1 END;\n"
    r"    SET @elapsed_ms = DATEDIFF\(millisecond, @started, GETUTCDATE\(\)\);\n"
    r"    EXEC sp_executesql @log, N'@request_id nvarchar\(64\), @status int, @elapsed_ms float, @pinned bit',\n"
    r"        @request_id = @request_id, @status = @status, @elapsed_ms = @elapsed_ms, @pinned = @pinned;\n"
)
#: the earlier rows' key when the target had no ab_key
_NO_KEY = "CAST(NULL AS nvarchar(4000))"
#: the probe's answers
CURRENT, EARLIER, RENAMING = 0, 1, 2


def aside(t: Tables, suffix: str) -> tuple[str, str]:
    """(qualified name, bare name) of the log's sibling ``<log>_<suffix>``."""
    schema_name, table = (part.strip("[]") for part in t.requests.split("."))
    bare = check_identifier(f"{table}{suffix}")
    return f"{q(schema_name)}.{q(bare)}", bare


def probe(t: Tables) -> str:
    """(state, procedures): the log's state (CURRENT; EARLIER: it has the earlier ``row_key``;
    RENAMING: it is missing while ``<log>_calls`` is there, between the two renames) and how
    many procedures still write the earlier rows."""
    log, calls = t.requests, aside(t, "_calls")[0]
    return (
        f"SELECT CASE WHEN OBJECT_ID(N'{log}', N'U') IS NOT NULL AND COL_LENGTH(N'{log}', N'row_key') IS NOT NULL "
        f"THEN {EARLIER} WHEN OBJECT_ID(N'{log}', N'U') IS NULL AND OBJECT_ID(N'{calls}', N'U') IS NOT NULL "
        f"THEN {RENAMING} ELSE {CURRENT} END AS [state], "
        "(SELECT COUNT(*) FROM sys.sql_modules WHERE [definition] LIKE ?) AS [procedures];\n"
    )


#: sys.sql_modules' definitions that hold the earlier log's key column ('[' escaped for LIKE)
EARLIER_PATTERN = "%AS [[]row_key]%"


def convert(t: Tables) -> str:
    """``<log>_calls`` emptied and filled from the earlier rows, grouped by call and slot."""
    calls = aside(t, "_calls")[0]
    columns = schema.request_log_columns()
    key = "REPLACE(REPLACE([row_key], N'\\', N'\\\\'), N'\"', N'\\\"')"
    keys = (
        f"CASE WHEN COUNT([row_key]) = COUNT(*) THEN N'[' + STRING_AGG(CAST(N'\"' + {key} + N'\"' "
        "AS nvarchar(max)), N',') + N']' END"
    )
    return tagged(
        "convert_request_log",
        f"DELETE FROM {calls} WHERE [endpoint] IS NOT NULL;\n"
        f"INSERT INTO {calls} ({columns})\n"
        "SELECT [endpoint], MIN([t]), [request_id], [slot], [version], [status], COUNT(*), AVG([latency_ms]),\n"
        f"    {keys}, [pinned], CAST(NULL AS nvarchar(2000))\n"
        f"FROM {t.requests}\n"
        "GROUP BY [endpoint], [request_id], [slot], [version], [status], [pinned];\n",
    )


def rename(table: str, to: str) -> str:
    return f"RENAME OBJECT {table} TO {q(to)};\n"


def earlier_procedures() -> str:
    """Parameter: EARLIER_PATTERN. Rows (schema, procedure, definition) of the procedures that
    write the earlier rows."""
    return (
        "SELECT OBJECT_SCHEMA_NAME([object_id]) AS [schema_name], OBJECT_NAME([object_id]) AS [procedure_name], "
        "[definition] FROM sys.sql_modules WHERE [definition] LIKE ?;\n"
    )


def rewrite_procedure(definition: str) -> str:
    """An earlier procedure's definition with its request log lines as the current generator
    writes them (an ALTER PROCEDURE). Refused when the earlier lines are not there exactly once."""
    from tdsp_deploy.backends.synapse.predict_tsql import dynamic, log_block, log_insert

    found = list(_EARLIER_BLOCK.finditer(definition))
    if len(found) != 1:
        raise BackendError(
            "cannot convert this pool's request log: a procedure that writes it is not as tdsp-deploy wrote it",
            hint="re-push that endpoint with the tdsp-deploy version that made it, or drop the procedure",
        )
    match = found[0]
    key = None if match["key"] == _NO_KEY else match["key"].replace("''", "'")
    insert = log_insert(match["log"], match["endpoint"], key, match["bucket"].replace("''", "'"))
    text = definition[: match.start()] + log_block(dynamic(insert, source="@source")) + definition[match.end() :]
    return re.sub(r"^\s*CREATE\s+PROC(EDURE)?\b", "ALTER PROCEDURE", text, count=1, flags=re.I)


def migrate(conn: Any, t: Tables, tell: Any) -> bool:
    """Convert the log when it is an earlier version's (or finish a conversion a failed
    connection left); True when there was anything to do."""
    rows = conn.execute(probe(t), (EARLIER_PATTERN,), doing="check the request log's shape")
    state, procedures = (int(rows[0][0]), int(rows[0][1])) if rows else (CURRENT, 0)
    if state == CURRENT and not procedures:
        return False
    calls, calls_name = aside(t, "_calls")
    rows_name = aside(t, "_rows")[1]
    log_name = t.requests.split(".")[1].strip("[]")
    if state == EARLIER:
        tell("migrate", f"converting the request log to a row per call and slot (the earlier one stays as {rows_name})")
        conn.execute(
            schema.create_table(t, calls, schema.REQUEST_COLUMNS, ()), doing="create the converted request log"
        )
        with conn.transaction():
            conn.execute(convert(t), doing="convert the request log")
        conn.execute(rename(t.requests, rows_name), doing="rename the earlier request log aside")
    if state in (EARLIER, RENAMING):
        conn.execute(rename(calls, log_name), doing="put the converted request log in its place")
    for schema_name, procedure, definition in conn.execute(
        earlier_procedures(), (EARLIER_PATTERN,), doing="list the procedures that write the request log"
    ):
        tell("migrate", f"altering {schema_name}.{procedure} to write the converted request log")
        conn.execute(rewrite_procedure(str(definition)), doing="alter a procedure to the converted request log")
    return True
