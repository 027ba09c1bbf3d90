"""The model, traffic and request log tables of both SQL targets, declared once.

Rows are keyed by ``[endpoint]``: the scoring procedure's name, an identifier the target
checked, so a procedure's text can name its own rows without carrying a manifest value. The
model table also keeps the model's ``[name]`` (a manifest value, a ``?`` parameter). Every
insert gives every column, so no table needs a DEFAULT (a dedicated SQL pool takes none with a
function). What the engines do differently is the dialect's: the options after the column list
(the pool's distribution) and whether keys and CHECKs are declared (the pool enforces none; its
insert keeps (endpoint, version) unique itself, as SQL Server's key would).
"""

from __future__ import annotations

from tdsp_deploy.backends.sql.rows import KEY_TYPE, SLOT_TYPE, VERSION_TYPE, Tables, throw

MODEL_COLUMNS = (
    ("endpoint", f"{KEY_TYPE} NOT NULL"),
    ("name", "nvarchar(128) NOT NULL"),
    ("version", f"{VERSION_TYPE} NOT NULL"),
    ("sha256", "char(64) NOT NULL"),
    ("flavor", "nvarchar(16) NOT NULL"),
    ("payload", "varbinary(max) NOT NULL"),
    ("created_at", "datetime2 NOT NULL"),
    ("created_by", "nvarchar(128) NOT NULL"),
    ("manifest", "nvarchar(max) NULL"),
    ("active", "bit NOT NULL"),
)
TRAFFIC_COLUMNS = (
    ("endpoint", f"{KEY_TYPE} NOT NULL"),
    ("slot", f"{SLOT_TYPE} NOT NULL"),
    ("version", f"{VERSION_TYPE} NOT NULL"),
    ("weight", "int NOT NULL"),
    ("salt", "nvarchar(64) NULL"),
    ("updated_at", "datetime2 NOT NULL"),
)
#: One row per call and slot that answered it, on both engines: its rows (``row_count``), the
#: status (500: that slot failed on them), the time per row, whether the call was pinned, the
#: error, and ``row_keys``: a JSON list of the keys of the slot's rows -- their ``ab_key``
#: values (text), else their numbers within the call -- or NULL when the engine does not tell
#: them apart (SQL Server: one slot scored every row; the pool without ab_key: PREDICT's rows
#: have no order). A row per call, not per scored row: A/B analysis and rollout guardrails
#: compare calls, and a write per scored row costs the pool as much as the scoring. No key
#: and no IDENTITY: nothing is unique across endpoints that SQL Server and the pool would both
#: keep, and the readers order by [t], [request_id], [slot].
REQUEST_COLUMNS = (
    ("endpoint", f"{KEY_TYPE} NOT NULL"),
    ("t", "datetime2 NOT NULL"),
    ("request_id", "nvarchar(64) NOT NULL"),
    ("slot", f"{SLOT_TYPE} NOT NULL"),
    ("version", f"{VERSION_TYPE} NOT NULL"),
    ("status", "int NOT NULL"),
    ("row_count", "int NOT NULL"),
    ("latency_ms", "float NULL"),
    ("row_keys", "nvarchar(max) NULL"),
    ("pinned", "bit NOT NULL"),
    ("message", "nvarchar(2000) NULL"),
)
#: the columns an insert into the request log gives, in order (all of them)
REQUEST_NAMES = tuple(name for name, _ in REQUEST_COLUMNS)
#: the order the readers page through the log in (unique per row: a call's id and a slot)
REQUEST_ORDER = ("t", "request_id", "slot")
MODEL_KEY = ("endpoint", "version")
TRAFFIC_KEY = ("endpoint", "slot")
WEIGHT_CHECK = "CHECK ([weight] BETWEEN 0 AND 100)"
#: insert_model's parameters, in order
INSERT_PARAMETERS = ("endpoint", "name", "version", "sha256", "flavor", "payload", "manifest")


def create_table(
    t: Tables, table: str, columns: tuple[tuple[str, str], ...], key: tuple[str, ...], *checks: str
) -> str:
    """``CREATE TABLE`` when the table is missing; keys and CHECKs where the engine enforces them."""
    lines = [f"    [{name}] {declared}" for name, declared in columns]
    if t.dialect.constraints:
        lines += [f"    {check}" for check in checks]
        if key:
            lines.append("    PRIMARY KEY (" + ", ".join(f"[{c}]" for c in key) + ")")
    options = f"\n{t.dialect.table_options}" if t.dialect.table_options else ""
    body = ",\n".join(lines)
    return f"IF OBJECT_ID(N'{table}', N'U') IS NULL\nCREATE TABLE {table} (\n{body}\n){options};\n"


def create_model_table(t: Tables) -> str:
    return create_table(t, t.models, MODEL_COLUMNS, MODEL_KEY)


def create_traffic_table(t: Tables) -> str:
    """Per endpoint and slot: the version it serves, its weight (percent) and the salt of the key
    hash (a new A/B experiment gets a new one, which reshuffles the keys)."""
    return create_table(t, t.traffic, TRAFFIC_COLUMNS, TRAFFIC_KEY, WEIGHT_CHECK)


def create_request_log_table(t: Tables) -> str:
    return create_table(t, t.requests, REQUEST_COLUMNS, ())


def request_log_columns() -> str:
    """``[endpoint], [t], ...``: every column of the request log, in order (an INSERT's list)."""
    return ", ".join(f"[{name}]" for name in REQUEST_NAMES)


def read_requests(t: Tables, page: int) -> str:
    """Parameters: endpoint, since (datetime2, UTC). The next ``page`` rows of the request log
    from ``since`` on, in REQUEST_ORDER (the page size is written in: the pool takes no
    parameter in TOP)."""
    order = ", ".join(f"[{c}]" for c in REQUEST_ORDER)
    return (
        f"SELECT TOP ({int(page)}) {request_log_columns()} FROM {t.requests} "
        f"WHERE [{t.key}] = ? AND [t] >= ? ORDER BY {order};\n"
    )


def read_failed_calls(t: Tables, limit: int) -> str:
    """Parameters: endpoint, slot. The slot's calls that failed (status 500), newest first."""
    return (
        f"SELECT TOP ({int(limit)}) [t], [request_id], [version], [row_count], [message] "
        f"FROM {t.requests} WHERE [{t.key}] = ? AND [slot] = ? AND [status] >= 500 ORDER BY [t] DESC;\n"
    )


def insert_model(t: Tables) -> str:
    """Parameters: INSERT_PARAMETERS. A version already stored with the same sha256 is left
    alone (a re-run is a no-op); with another sha256 the batch fails (50001): a version's
    content never changes."""
    return f"""DECLARE @endpoint {KEY_TYPE} = ?, @name nvarchar(128) = ?, @version {VERSION_TYPE} = ?,
    @sha256 char(64) = ?, @flavor nvarchar(16) = ?, @payload varbinary(max) = ?, @manifest nvarchar(max) = ?;
IF EXISTS (SELECT 1 FROM {t.models}
    WHERE [endpoint] = @endpoint AND [version] = @version AND [sha256] <> @sha256)
    {throw(50001)}
IF NOT EXISTS (SELECT 1 FROM {t.models} WHERE [endpoint] = @endpoint AND [version] = @version)
    INSERT INTO {t.models} ([endpoint], [name], [version], [sha256], [flavor], [payload],
        [created_at], [created_by], [manifest], [active])
    SELECT @endpoint, @name, @version, @sha256, @flavor, @payload, {t.dialect.now}, SUSER_SNAME(), @manifest, 0;
"""
