"""The T-SQL of the synapse target's sql mode: an ONNX model behind PREDICT in a dedicated SQL pool.

Shared with the SQL Server target: identifier checks and bracket quoting, and ``Statement``
(a batch with the names of its ``?`` parameters). Different, because a dedicated SQL pool is
not SQL Server (learn.microsoft.com, Azure Synapse "Use transactions", "Use stored procedures",
"Assign variables", table constraints, CREATE/ALTER PROCEDURE for Azure Synapse):

- no DDL inside a user transaction: the table and the procedure are created outside it, and
  only the rows (insert, activate) change inside one explicit transaction;
- no ``CREATE OR ALTER``: a stub is created when the procedure is missing, then ``ALTER``ed;
- PRIMARY KEY only NONCLUSTERED NOT ENFORCED (wrong answers on duplicates): no key, the insert
  batch keeps (endpoint, version) unique itself; no DEFAULT with functions: values are given;
- the model table is a ROUND_ROBIN HEAP with a ``varbinary(max)`` payload, as the PREDICT
  documentation's model table is;
- no SELECT assigning several variables, and a variable may not be used in the DECLARE that
  sets it.

Nothing from the manifest is written into the text except identifiers that target.py checked
(bracket-quoted here, or as N'...' literals of the checked name) and SQL types from PREDICT's
list. Model name, version, hash, payload and the deployment document are ``?`` parameters.

How the procedure finds its model: rows are keyed by endpoint -- the procedure's own name, an
identifier -- so its text can name them without carrying a manifest value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.sqlserver.target import check_identifier, quote_identifier
from tdsp_deploy.backends.sqlserver.tsql import Statement
from tdsp_deploy.backends.synapse.sql_predict_rules import VERSION_COLUMN, _Column

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

INPUT_TABLE = "#tdsp_input"
#: The statements run inside the one transaction of a deployment (rows only).
TRANSACTION = ("insert_model", "activate_version")
INSERT_PARAMETERS = ("endpoint", "name", "version", "sha256", "flavor", "payload", "manifest")
THROWS = {
    50001: "this model version is already stored with other content; give the model a new version",
    50002: "this model version is not in the model table; insert it first",
    50003: "no active model version for this procedure; push the model first",
    50004: "@input_table must name a table or view: [schema.]name or #temp",
}


def _q(name: str) -> str:
    return quote_identifier(check_identifier(name))


def _literal(name: str) -> str:
    """N'<name>' of a checked identifier (letters, digits, '_': nothing to escape)."""
    return f"N'{check_identifier(name)}'"


def procedure(target: SynapseTarget, endpoint: str) -> str:
    """The procedure's name (not quoted): ``target.procedure`` or ``score_<endpoint>``."""
    return check_identifier(target.procedure_name(endpoint))


def qualified_table(target: SynapseTarget) -> str:
    return f"{_q(target.schema_)}.{_q(target.model_table)}"


def qualified_procedure(target: SynapseTarget, endpoint: str) -> str:
    return f"{_q(target.schema_)}.{_q(procedure(target, endpoint))}"


def _throw(number: int) -> str:
    return f"THROW {number}, N'{THROWS[number]}', 1;"


# --- the model table ------------------------------------------------------------------------------
def create_model_table(target: SynapseTarget) -> str:
    table = qualified_table(target)
    return f"""IF OBJECT_ID(N'{table}', N'U') IS NULL
CREATE TABLE {table} (
    [endpoint] nvarchar(128) NOT NULL,
    [name] nvarchar(128) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [sha256] char(64) NOT NULL,
    [flavor] nvarchar(16) NOT NULL,
    [payload] varbinary(max) NOT NULL,
    [created_at] datetime2 NOT NULL,
    [created_by] nvarchar(128) NOT NULL,
    [manifest] nvarchar(max) NULL,
    [active] bit NOT NULL
)
WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);
"""


def insert_model(target: SynapseTarget) -> str:
    """Parameters: INSERT_PARAMETERS. A version already stored with the same sha256 is left
    alone (a re-run is a no-op); with another sha256 the batch fails (50001)."""
    table = qualified_table(target)
    return f"""DECLARE @endpoint nvarchar(128) = ?, @name nvarchar(128) = ?, @version nvarchar(64) = ?,
    @sha256 char(64) = ?, @flavor nvarchar(16) = ?, @payload varbinary(max) = ?, @manifest nvarchar(max) = ?;
IF EXISTS (SELECT 1 FROM {table}
    WHERE [endpoint] = @endpoint AND [version] = @version AND [sha256] <> @sha256)
    {_throw(50001)}
IF NOT EXISTS (SELECT 1 FROM {table} WHERE [endpoint] = @endpoint AND [version] = @version)
    INSERT INTO {table} ([endpoint], [name], [version], [sha256], [flavor], [payload],
        [created_at], [created_by], [manifest], [active])
    SELECT @endpoint, @name, @version, @sha256, @flavor, @payload, GETUTCDATE(), SUSER_SNAME(), @manifest, 0;
"""


def activate_version(target: SynapseTarget) -> str:
    """Parameters: endpoint, version. That version becomes the endpoint's only active one."""
    table = qualified_table(target)
    return f"""DECLARE @endpoint nvarchar(128) = ?, @version nvarchar(64) = ?;
IF NOT EXISTS (SELECT 1 FROM {table} WHERE [endpoint] = @endpoint AND [version] = @version)
    {_throw(50002)}
UPDATE {table}
SET [active] = CASE WHEN [version] = @version THEN 1 ELSE 0 END
WHERE [endpoint] = @endpoint;
"""


# --- the scoring procedure ------------------------------------------------------------------------
def create_procedure_stub(target: SynapseTarget, endpoint: str) -> str:
    """A placeholder when the procedure is missing (ALTER needs an object; there is no CREATE OR ALTER)."""
    name = qualified_procedure(target, endpoint)
    return (
        f"IF OBJECT_ID(N'{name}', N'P') IS NULL\n"
        f"    EXEC (N'CREATE PROCEDURE {name} AS SELECT 1 AS [stub];');\n"
    )


def predict_query(target: SynapseTarget, endpoint: str, outputs: Sequence[_Column], data: str) -> str:
    """``SELECT d.*, p.*, <version>`` over PREDICT for the table source ``data`` (quoted)."""
    table = qualified_table(target)
    active = f"FROM {table} WHERE [endpoint] = {_literal(procedure(target, endpoint))} AND [active] = 1"
    columns = ", ".join(f"{_q(c.name)} {c.type}" for c in outputs)
    return (
        f"SELECT d.*, p.*, m.[version] AS {_q(VERSION_COLUMN)}\n"
        f"FROM PREDICT(MODEL = (SELECT [payload] {active}),\n"
        f"             DATA = {data} AS d, RUNTIME = ONNX)\n"
        f"WITH ({columns}) AS p\n"
        f"CROSS JOIN (SELECT [version] {active}) AS m;"
    )


def alter_procedure(target: SynapseTarget, endpoint: str, outputs: Sequence[_Column]) -> str:
    """``EXEC <procedure> @input_table = N'[schema.]table'`` scores that table's (or view's, or
    #temp table's) rows: every column of it, the outputs, and the model version. The name is
    split with PARSENAME and each part QUOTENAMEd before it joins the dynamic query."""
    table = qualified_table(target)
    key = _literal(procedure(target, endpoint))
    # The query as an N'...' literal (quotes doubled) with the quoted table name spliced in.
    before, after = predict_query(target, endpoint, outputs, "{data}").replace("'", "''").split("{data}")
    query = f"N'{before}' + @source + N'{after}'"
    return f"""ALTER PROCEDURE {qualified_procedure(target, endpoint)} @input_table nvarchar(256)
AS
BEGIN
    SET NOCOUNT ON;
    IF NOT EXISTS (SELECT 1 FROM {table} WHERE [endpoint] = {key} AND [active] = 1)
        {_throw(50003)}
    IF PARSENAME(@input_table, 1) IS NULL OR PARSENAME(@input_table, 3) IS NOT NULL
        {_throw(50004)}
    DECLARE @source nvarchar(300) = CASE WHEN PARSENAME(@input_table, 2) IS NULL
        THEN QUOTENAME(PARSENAME(@input_table, 1))
        ELSE QUOTENAME(PARSENAME(@input_table, 2)) + N'.' + QUOTENAME(PARSENAME(@input_table, 1)) END;
    DECLARE @query nvarchar(max) = {query};
    EXEC sp_executesql @query;
END;
"""


def drop_procedure(target: SynapseTarget, endpoint: str) -> str:
    name = qualified_procedure(target, endpoint)
    return f"IF OBJECT_ID(N'{name}', N'P') IS NOT NULL\n    DROP PROCEDURE {name};\n"


def drop_table_if_empty(target: SynapseTarget) -> str:
    """Undo of a table a failed first push created: dropped only when no row of any model is in it."""
    table = qualified_table(target)
    return (
        f"IF OBJECT_ID(N'{table}', N'U') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table})\n"
        f"    DROP TABLE {table};\n"
    )


def delete_rows(target: SynapseTarget) -> str:
    """Parameter: endpoint."""
    return f"DELETE FROM {qualified_table(target)} WHERE [endpoint] = ?;\n"


def delete_version(target: SynapseTarget) -> str:
    """Parameters: endpoint, version. Undo of a row a failed push inserted."""
    return f"DELETE FROM {qualified_table(target)} WHERE [endpoint] = ? AND [version] = ?;\n"


def list_versions(target: SynapseTarget) -> str:
    """Parameter: endpoint. Rows (version, sha256, active, manifest), oldest first."""
    return (
        f"SELECT [version], [sha256], [active], [manifest] FROM {qualified_table(target)} "
        "WHERE [endpoint] = ? ORDER BY [created_at], [version];\n"
    )


# --- scoring rows from a caller ---------------------------------------------------------------------
def scoring_batch(
    target: SynapseTarget, endpoint: str, rows: Sequence[Sequence[Any]]
) -> tuple[str, list[Any]]:
    """One batch: the rows into a #temp table (values bound as ``?``, one SELECT per row joined
    by UNION ALL), EXEC of the procedure on it, and the table dropped. No rows: an empty table
    (the health probe). A #temp table lives as long as the session, so each caller has its own."""
    names = ", ".join(_q(c.name) for c in target.inputs)
    declared = ", ".join(f"{_q(c.name)} {c.type}" for c in target.inputs)
    params: list[Any] = []
    selects = []
    for row in rows:
        selects.append("SELECT " + ", ".join(f"CAST(? AS {c.type})" for c in target.inputs))
        params.extend(row)
    lines = [
        "SET NOCOUNT ON;",
        f"IF OBJECT_ID(N'tempdb..{INPUT_TABLE}') IS NOT NULL DROP TABLE {INPUT_TABLE};",
        f"CREATE TABLE {INPUT_TABLE} ({declared}) WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);",
    ]
    if selects:
        lines.append(f"INSERT INTO {INPUT_TABLE} ({names})\n" + "\nUNION ALL ".join(selects) + ";")
    lines += [
        f"EXEC {qualified_procedure(target, endpoint)} @input_table = N'{INPUT_TABLE}';",
        f"DROP TABLE {INPUT_TABLE};",
    ]
    return "\n".join(lines) + "\n", params


# --- everything, in order -----------------------------------------------------------------------------
def deployment_statements(
    target: SynapseTarget, endpoint: str, outputs: Sequence[_Column]
) -> list[Statement]:
    """The batches of a deployment in execution order; TRANSACTION names those run in one
    transaction, the others are DDL the pool runs outside any user transaction."""
    return [
        Statement("create_model_table", create_model_table(target)),
        Statement("create_procedure_stub", create_procedure_stub(target, endpoint)),
        Statement("insert_model", insert_model(target), INSERT_PARAMETERS),
        Statement("activate_version", activate_version(target), ("endpoint", "version")),
        Statement("alter_procedure", alter_procedure(target, endpoint, outputs)),
    ]


def deployment_document(
    target: SynapseTarget, manifest: ManifestBase, lock: PackageLock, *, source: str
) -> str:
    """The JSON in the row's ``manifest`` column: what runs, from what (and the outputs, so an
    older version's procedure can be rebuilt on rollback)."""
    doc = {
        "endpoint": manifest.name,
        "package_id": lock.package_id,
        "model": lock.model.to_json(),
        "flavor": manifest.model.flavor,
        "payload": source,
        "procedure": procedure(target, manifest.name),
        "inputs": [c.model_dump() for c in target.inputs],
        "outputs": [c.model_dump() for c in target.outputs],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def parameter_values(
    target: SynapseTarget, manifest: ManifestBase, lock: PackageLock, payload: bytes, *, source: str
) -> dict[str, Any]:
    """The values of the named parameters; ``sha256`` is the ONNX payload's own hash."""
    return {
        "endpoint": procedure(target, manifest.name),
        "name": manifest.model_name,
        "version": lock.model.version,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "flavor": "onnx",
        "payload": payload,
        "manifest": deployment_document(target, manifest, lock, source=source),
    }


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
    values = parameter_values(target, manifest, lock, payload, source=source)
    written: list[Path] = []
    listing: dict[str, Any] = {}
    in_transaction = []
    for number, statement in enumerate(deployment_statements(target, manifest.name, target.outputs), start=1):
        path = out / f"{number:02d}-{statement.name}.sql"
        path.write_text(statement.sql, encoding="utf-8", newline="\n")
        written.append(path)
        listing[path.name] = [
            {"name": p, "value": "model.onnx" if p == "payload" else values[p]} for p in statement.parameters
        ]
        if statement.name in TRANSACTION:
            in_transaction.append(path.name)
    model = out / "model.onnx"
    model.write_bytes(payload)
    parameters = out / "parameters.json"
    document = {"statements": listing, "one_transaction": in_transaction, "payload_sha256": values["sha256"]}
    parameters.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    example = out / "score-example.sql"
    example.write_text(
        f"-- Score the rows of a table or view (columns: {', '.join(c.name for c in target.inputs)}):\n"
        f"EXEC {qualified_procedure(target, manifest.name)} @input_table = N'dbo.my_table';\n",
        encoding="utf-8",
        newline="\n",
    )
    return [*written, model, parameters, example]
