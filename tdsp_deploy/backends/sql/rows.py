"""The T-SQL both SQL targets run on an endpoint's rows: its slots (assign, weigh, salt, restore,
delete), the active flags, and reading its versions and slots back.

Only identifiers that the targets checked are written into the text (bracket-quoted), and the
dialect's current-time function; every value is a ``?`` parameter. A batch that changes rows
starts with a ``-- tdsp-deploy: <statement>`` line, so that a DBA reading the server's traces
knows what sent it. The forms are those both engines run: a dedicated SQL pool's UPDATE takes
no join and its DECLARE no variable it sets, and it has no DEFAULT, so times are given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tdsp_deploy.backends.sql.dialect import Dialect
from tdsp_deploy.backends.sql.errors import THROWS
from tdsp_deploy.backends.sql.target import check_identifier, quote_identifier

VERSION_TYPE = "nvarchar(64)"
SLOT_TYPE = "nvarchar(64)"
KEY_TYPE = "nvarchar(128)"


def q(name: str) -> str:
    """A checked identifier, bracket-quoted."""
    return quote_identifier(check_identifier(name))


def tagged(name: str, sql: str) -> str:
    return f"-- tdsp-deploy: {name}\n{sql}"


def throw(number: int) -> str:
    """THROW ``number`` with its message from the one table, after its stable code (the driver
    keeps the message, not the number)."""
    message = THROWS[number].message.replace("'", "''")
    return f"THROW {number}, N'tdsp-{number}: {message}', 1;"


@dataclasses.dataclass(frozen=True)
class Tables:
    """Where an endpoint's rows live: the three tables (qualified and quoted), the column that
    keys the rows of one endpoint, and the engine."""

    models: str
    traffic: str
    requests: str
    key: str
    dialect: Dialect

    @classmethod
    def of(cls, target: Any, *, key: str, dialect: Dialect) -> Tables:
        schema = q(target.schema_)
        return cls(
            models=f"{schema}.{q(target.model_table)}",
            traffic=f"{schema}.{q(target.traffic_table)}",
            requests=f"{schema}.{q(target.request_log_table)}",
            key=check_identifier(key),
            dialect=dialect,
        )


def assign_slot(t: Tables) -> str:
    """Parameters: key, slot, version. The slot serves that version from now on; a new slot takes
    no traffic (``set_weight`` gives it some) and the endpoint's salt, an existing one keeps its
    weight."""
    k, now = t.key, t.dialect.now
    return tagged(
        "assign_slot",
        f"""DECLARE @{k} {KEY_TYPE} = ?, @slot {SLOT_TYPE} = ?, @version {VERSION_TYPE} = ?;
IF NOT EXISTS (SELECT 1 FROM {t.models} WHERE [{k}] = @{k} AND [version] = @version)
    {throw(50002)}
IF EXISTS (SELECT 1 FROM {t.traffic} WHERE [{k}] = @{k} AND [slot] = @slot)
    UPDATE {t.traffic}
    SET [version] = @version, [updated_at] = {now}
    WHERE [{k}] = @{k} AND [slot] = @slot;
ELSE
    INSERT INTO {t.traffic} ([{k}], [slot], [version], [weight], [salt], [updated_at])
    SELECT @{k}, @slot, @version, 0, MAX([salt]), {now}
    FROM {t.traffic} WHERE [{k}] = @{k};
""",
    )


def set_weight(t: Tables) -> str:
    """Parameters: key, slot, weight. Run for every slot of the endpoint in one transaction, then
    ``refresh_active`` (which checks the sum)."""
    k = t.key
    return tagged(
        "set_weight",
        f"""DECLARE @{k} {KEY_TYPE} = ?, @slot {SLOT_TYPE} = ?, @weight int = ?;
IF NOT EXISTS (SELECT 1 FROM {t.traffic} WHERE [{k}] = @{k} AND [slot] = @slot)
    {throw(50004)}
UPDATE {t.traffic}
SET [weight] = @weight, [updated_at] = {t.dialect.now}
WHERE [{k}] = @{k} AND [slot] = @slot;
""",
    )


def refresh_active(t: Tables) -> str:
    """Parameter: key. Refuses weights that do not add up to 100 (or 0); marks active the versions
    that take traffic."""
    k = t.key
    return tagged(
        "refresh_active",
        f"""DECLARE @{k} {KEY_TYPE} = ?;
DECLARE @total int;
SET @total = (SELECT ISNULL(SUM([weight]), 0) FROM {t.traffic} WHERE [{k}] = @{k});
IF @total NOT IN (0, 100)
    {throw(50005)}
UPDATE {t.models} SET [active] = 0 WHERE [{k}] = @{k};
UPDATE {t.models} SET [active] = 1
WHERE [{k}] = @{k}
    AND [version] IN (SELECT [version] FROM {t.traffic} WHERE [{k}] = @{k} AND [weight] > 0);
""",
    )


def set_salt(t: Tables) -> str:
    """Parameters: key, salt. A new A/B experiment's id: the key hash starts afresh."""
    k = t.key
    return tagged(
        "set_salt",
        f"""DECLARE @{k} {KEY_TYPE} = ?, @salt nvarchar(64) = ?;
UPDATE {t.traffic} SET [salt] = @salt WHERE [{k}] = @{k};
""",
    )


#: restore_slot's parameters, after the key: a slot as list_slots reads it
SLOT_COLUMNS = ("slot", "version", "weight", "salt", "updated_at")


def restore_slot(t: Tables) -> str:
    """Parameters: key, then SLOT_COLUMNS. A slot put back exactly as it was (undo)."""
    k = t.key
    return tagged(
        "restore_slot",
        f"""DECLARE @{k} {KEY_TYPE} = ?, @slot {SLOT_TYPE} = ?, @version {VERSION_TYPE} = ?,
    @weight int = ?, @salt nvarchar(64) = ?, @updated_at datetime2 = ?;
INSERT INTO {t.traffic} ([{k}], [slot], [version], [weight], [salt], [updated_at])
SELECT @{k}, @slot, @version, @weight, @salt, @updated_at;
""",
    )


def list_slots(t: Tables) -> str:
    """Parameter: key. Rows (SLOT_COLUMNS), by slot."""
    columns = ", ".join(f"[{c}]" for c in SLOT_COLUMNS)
    return f"SELECT {columns} FROM {t.traffic} WHERE [{t.key}] = ? ORDER BY [slot];\n"


def list_versions(t: Tables) -> str:
    """Parameter: key. Rows (version, sha256, active, manifest, created_at, created_by), oldest first."""
    return (
        "SELECT [version], [sha256], [active], [manifest], [created_at], [created_by] "
        f"FROM {t.models} WHERE [{t.key}] = ? ORDER BY [created_at], [version];\n"
    )


def delete_slot(t: Tables) -> str:
    """Parameters: key, slot."""
    return f"DELETE FROM {t.traffic} WHERE [{t.key}] = ? AND [slot] = ?;\n"


def delete_rows(t: Tables, table: str) -> str:
    """Parameter: key. Every row of the endpoint in ``table`` (one of ``t``'s)."""
    return f"DELETE FROM {table} WHERE [{t.key}] = ?;\n"


def delete_version(t: Tables) -> str:
    """Parameters: key, version. Undo of a row a failed push inserted."""
    return f"DELETE FROM {t.models} WHERE [{t.key}] = ? AND [version] = ?;\n"
