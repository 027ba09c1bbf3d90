"""The T-SQL of the sqlserver target, as text for a DB-API driver (qmark style, ``?``).

What it adds to the SQL core's T-SQL (sql/schema.py: the three tables and the model insert;
sql/rows.py: slots, weights, salts, active flags, reading rows back): the two scoring
procedures around ``sp_execute_external_script`` -- which write the request log's rows from
the script's ``request_log`` -- and the server probes.

The only things built into the text are identifiers that ``target.py`` checked (and that are
bracket-quoted here), SQL types from its allow-list, and the generated Python script (as an
``N'...'`` literal with its quotes doubled). Every other value -- model name, version, hash,
payload, the deployment document -- is a ``?`` parameter, listed by ``Statement.parameters``.

How a procedure finds its model: the tables are the SQL core's (sql/schema.py), keyed by
endpoint -- the procedure's own name, a checked identifier -- so the procedure's text names its
rows itself. (Databases made when the rows were keyed by the model's name, found through an
extended property, are brought to this schema by migrate.py.)

Slots and traffic: the traffic table holds, per model, each deployment slot's version and
traffic weight (percent). The scoring procedures route: a call pinned with ``@slot`` goes to
that slot's version; any other call's rows are split over the slots with a weight, by a hash
of each row's key (script.py). What answered goes into the request log table, one row per
call and slot, which ``ab analyze`` and ``logs`` read.

Order of execution (``deployment_statements``): the tables, the model row, the two
procedures, then the slot (with no traffic) and the active flags -- so a
procedure never points at a version that is not there.

Batches other than CREATE PROCEDURE start with a ``-- tdsp-deploy: <statement>`` line, so
that a DBA reading the server's traces knows what sent them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.dialect import SQL_SERVER
from tdsp_deploy.backends.sql.document import (
    Statement,
    deployment_document,
    row_values,
    table_statements,
    write_statements,
)
from tdsp_deploy.backends.sql.errors import SCRIPT_FAILED
from tdsp_deploy.backends.sql.rows import (
    KEY_TYPE,
    SLOT_TYPE,
    VERSION_TYPE,
    Tables,
    assign_slot,
    q,
    refresh_active,
    throw,
)
from tdsp_deploy.backends.sql.schema import INSERT_PARAMETERS
from tdsp_deploy.backends.sql.target import Column
from tdsp_deploy.backends.sqlserver.script import model_payload, row_prelude
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

#: The ``@params`` declaration every scoring call starts with.
MODEL_PARAMS = (
    "@model_bundle varbinary(max), @routes nvarchar(max), @request_log nvarchar(max) OUTPUT, "
    "@script_error nvarchar(max) OUTPUT"
)


# --- quoting ---------------------------------------------------------------------------------


def tables(target: SqlServerTarget) -> Tables:
    """The target's tables, keyed by the procedure's name, in SQL Server's dialect."""
    return Tables.of(target, key="endpoint", dialect=SQL_SERVER)


def _qualified(target: SqlServerTarget, name: str) -> str:
    return f"{q(target.schema_)}.{q(name)}"


def _name_literal(text: str) -> str:
    """N'...' holding checked identifiers only (letters, digits, '_', '[', ']', '.')."""
    if any(ch not in "[]._" and not ch.isalnum() for ch in text) or not text.isascii():
        raise ValueError(f"not an identifier text: {text!r}")
    return f"N'{text}'"


def script_literal(script: str) -> str:
    """The script as an N'...' literal: single quotes doubled, nothing else changed."""
    if "\0" in script:
        raise ValueError("the scoring script holds a NUL character")
    return "N'" + script.replace("'", "''") + "'"


def _columns(columns: Sequence[Column]) -> str:
    return ", ".join(f"{q(c.name)} {c.type}" for c in columns)


def _result_sets(target: SqlServerTarget) -> str:
    return f"WITH RESULT SETS (({_columns(target.outputs)}, {q('model_version')} {VERSION_TYPE}))"


def _tagged(name: str, sql: str) -> str:
    return f"-- tdsp-deploy: {name}\n{sql}"


# --- the model table ------------------------------------------------------------------------


def create_model_table(target: SqlServerTarget) -> str:
    return _tagged("create_model_table", schema.create_model_table(tables(target)))


def create_traffic_table(target: SqlServerTarget) -> str:
    return _tagged("create_traffic_table", schema.create_traffic_table(tables(target)))


def create_request_log_table(target: SqlServerTarget) -> str:
    """The core's request log (sql/schema.py): one row per scoring call and slot."""
    return _tagged("create_request_log_table", schema.create_request_log_table(tables(target)))


def insert_model(target: SqlServerTarget) -> str:
    return _tagged("insert_model", schema.insert_model(tables(target)))


# --- the scoring procedures -----------------------------------------------------------------


def _route(target: SqlServerTarget, endpoint: str) -> str:
    """The procedures' common start: which slots answer, and their models as one bundle."""
    models = _qualified(target, target.model_table)
    traffic = _qualified(target, target.traffic_table)
    return f"""    SET NOCOUNT ON;
    DECLARE @endpoint {KEY_TYPE} = {_name_literal(target.procedure_name(endpoint))};
    DECLARE @routes nvarchar(max), @bundle varbinary(max) = 0x,
        @request_log nvarchar(max), @script_error nvarchar(max), @n int = 1, @count int;
    DECLARE @route TABLE ([n] int IDENTITY(1, 1) PRIMARY KEY, [slot] {SLOT_TYPE} NOT NULL,
        [version] {VERSION_TYPE} NOT NULL, [weight] int NOT NULL, [salt] nvarchar(64) NULL);
    -- Who answers: the slot that @slot pins, else every slot with a traffic weight.
    INSERT INTO @route ([slot], [version], [weight], [salt])
    SELECT [slot], [version], [weight], [salt]
    FROM {traffic}
    WHERE [endpoint] = @endpoint AND ([slot] = @slot OR (@slot IS NULL AND [weight] > 0))
    ORDER BY [slot];
    SET @count = @@ROWCOUNT;
    IF @count = 0
        {throw(50003)}
    -- Their models, in route order, as one bundle: each payload after its 8-byte length.
    WHILE @n <= @count
    BEGIN
        SELECT @bundle = @bundle + CAST(DATALENGTH(m.[payload]) AS binary(8)) + m.[payload]
        FROM @route AS r
        JOIN {models} AS m ON m.[endpoint] = @endpoint AND m.[version] = r.[version]
        WHERE r.[n] = @n;
        SET @n = @n + 1;
    END;
    SET @routes = (SELECT [slot], [version], [weight], [salt] FROM @route ORDER BY [n] FOR JSON PATH);
    IF @request_id IS NULL
        SET @request_id = CONVERT(nvarchar(64), NEWID());
"""


def _script_failed() -> str:
    """The script's own failure (script.py catches it) as this procedure's error: the driver
    keeps one diagnostic record, so the traceback's tail travels in it (THROW takes 2048)."""
    return f"""    IF @script_error IS NOT NULL
    BEGIN
        DECLARE @thrown nvarchar(2048) = N'tdsp-{SCRIPT_FAILED}: the model failed:' + NCHAR(10) + RIGHT(@script_error, 2000);
        THROW {SCRIPT_FAILED}, @thrown, 1;
    END;
"""


def _log_requests(target: SqlServerTarget) -> str:
    """What answered, from the script's ``request_log``, into the request log table."""
    if not target.request_log:
        return ""
    log = _qualified(target, target.request_log_table)
    return f"""    -- One row per slot that answered, for `tdsp-deploy ab analyze` and `tdsp-deploy logs`.
    INSERT INTO {log}
        ({schema.request_log_columns()})
    SELECT @endpoint, SYSUTCDATETIME(), @request_id, [slot], [version], [status], [row_count], [latency_ms],
        [row_keys], CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]
    FROM OPENJSON(@request_log)
    WITH ([slot] {SLOT_TYPE}, [version] {VERSION_TYPE}, [status] int, [row_count] int, [latency_ms] float,
        [row_keys] nvarchar(max) AS JSON, [message] nvarchar(2000));
"""


_CALL_PARAMETERS = f"""    @slot {SLOT_TYPE} = NULL,
    @request_id nvarchar(64) = NULL"""
_BOUND_MODEL = """        @model_bundle = @bundle,
        @routes = @routes,
        @request_log = @request_log OUTPUT,
        @script_error = @script_error OUTPUT"""


def _endpoint(manifest: ManifestBase) -> str:
    return manifest.name


def create_or_alter_procedure(target: SqlServerTarget, manifest: ManifestBase, script: str) -> str:
    """The batch form: ``EXEC <procedure> @input_query = N'SELECT ...'`` scores the query's
    rows (``@slot`` pins a slot; ``@request_id`` names the call in the request log)."""
    procedure = _qualified(target, target.procedure_name(_endpoint(manifest)))
    return f"""CREATE OR ALTER PROCEDURE {procedure}
    @input_query nvarchar(max),
{_CALL_PARAMETERS}
AS
BEGIN
{_route(target, _endpoint(manifest))}    EXEC sp_execute_external_script
        @language = N'Python',
        @script = {script_literal(script)},
        @input_data_1 = @input_query,
        @params = N'{MODEL_PARAMS}',
{_BOUND_MODEL}
    {_result_sets(target)};
{_script_failed()}{_log_requests(target)}END;
"""


def create_or_alter_row_procedure(target: SqlServerTarget, manifest: ManifestBase, script: str) -> str:
    """The single-row form: ``EXEC <procedure>_row @col = value, ...`` with typed parameters."""
    procedure = _qualified(target, target.row_procedure_name(_endpoint(manifest)))
    parameters = "".join(f"    @{c.name} {c.type},\n" for c in target.inputs)
    declared = ", ".join(f"@{c.name} {c.type}" for c in target.inputs)
    bound = "".join(f",\n        @{c.name} = @{c.name}" for c in target.inputs)
    return f"""CREATE OR ALTER PROCEDURE {procedure}
{parameters}{_CALL_PARAMETERS}
AS
BEGIN
{_route(target, _endpoint(manifest))}    EXEC sp_execute_external_script
        @language = N'Python',
        @script = {script_literal(row_prelude(target.inputs) + script)},
        @params = N'{MODEL_PARAMS}, {declared}',
{_BOUND_MODEL}{bound}
    {_result_sets(target)};
{_script_failed()}{_log_requests(target)}END;
"""


# --- probes ---------------------------------------------------------------------------------


def probe_configuration() -> str:
    """1 when Machine Learning Services may run scripts (sp_configure 'external scripts enabled')."""
    return _tagged(
        "probe_configuration",
        "SELECT [value_in_use] FROM sys.configurations WHERE [name] = N'external scripts enabled';\n",
    )


def probe_permission() -> str:
    """1 when the current user may run external scripts in this database."""
    return _tagged(
        "probe_permission",
        "SELECT HAS_PERMS_BY_NAME(NULL, N'DATABASE', N'EXECUTE ANY EXTERNAL SCRIPT') AS [allowed];\n",
    )


PROBE_PYTHON_SCRIPT = """\
# tdsp-deploy probe: the server's Python and the versions of the libraries asked for.
import sys
import importlib.metadata
import pandas
rows = [("python", sys.version.split()[0])]
for name in [part.strip() for part in libraries.split(",") if part.strip()]:
    try:
        rows.append((name, importlib.metadata.version(name)))
    except importlib.metadata.PackageNotFoundError:
        rows.append((name, None))
OutputDataSet = pandas.DataFrame(rows, columns=["name", "version"])
"""


def probe_python() -> str:
    """Parameter: library names, comma-separated. Rows (name, version); version NULL when the
    library is not installed; the first row is ``python``. Read by position: without WITH
    RESULT SETS the columns have no names (and the batch parses with sqlglot)."""
    return _tagged(
        "probe_python",
        f"""EXEC sp_execute_external_script
    @language = N'Python',
    @script = {script_literal(PROBE_PYTHON_SCRIPT)},
    @params = N'@libraries nvarchar(max)',
    @libraries = ?;
""",
    )


# --- everything, in order -------------------------------------------------------------------


def deployment_statements(target: SqlServerTarget, manifest: ManifestBase, script: str) -> list[Statement]:
    """The batches of a deployment, in execution order, with their parameters' names."""
    statements = table_statements(target, create_model_table, create_traffic_table, create_request_log_table)
    return [
        *statements,
        Statement("insert_model", insert_model(target), INSERT_PARAMETERS),
        Statement("create_procedure", create_or_alter_procedure(target, manifest, script)),
        Statement("create_row_procedure", create_or_alter_row_procedure(target, manifest, script)),
        Statement("assign_slot", assign_slot(tables(target)), ("endpoint", "slot", "version")),
        Statement("refresh_active", refresh_active(tables(target)), ("endpoint",)),
    ]


def parameter_values(
    target: SqlServerTarget, manifest: ManifestBase, lock: PackageLock, payload: bytes, *, slot: str
) -> dict[str, Any]:
    """The values of the named parameters (sql/document.row_values)."""
    flavor = manifest.model.flavor
    if flavor is None:
        raise ValueError("model.flavor is required on the sqlserver target (sklearn, onnx or mlflow)")
    document = deployment_document(target, manifest, lock)
    values = row_values(manifest, lock, payload, flavor=flavor, document=document, slot=slot)
    return {**values, "endpoint": target.procedure_name(manifest.name)}


def render_tsql(
    target: SqlServerTarget,
    manifest: ManifestBase,
    script: str,
    lock: PackageLock,
    out_dir: Path,
    *,
    payload: bytes | None = None,
    slot: str | None = None,
) -> list[Path]:
    """Write what a deployment executes, for review: ``NN-<statement>.sql`` in execution order,
    ``model.bin`` (the payload exactly as inserted) and ``parameters.json`` (each statement's
    parameters, in order; the payload as ``model.bin``). The slot is the manifest's
    ``rollout.deployment``, else blue (a push picks the one without traffic)."""
    if payload is None:
        payload = model_payload(Path(manifest.model.path), manifest.model.flavor or "")[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = parameter_values(
        target, manifest, lock, payload, slot=slot or manifest.rollout.deployment or "blue"
    )
    statements = deployment_statements(target, manifest, script)
    written, listing = write_statements(out, statements, values, "model.bin")
    model_bin = out / "model.bin"
    model_bin.write_bytes(payload)
    parameters = out / "parameters.json"
    parameters.write_text(json.dumps(listing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [*written, model_bin, parameters]
