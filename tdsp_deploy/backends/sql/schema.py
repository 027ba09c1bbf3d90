"""The model and traffic tables of both SQL targets, declared once.

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
