"""The T-SQL of the sqlserver target, as text for a DB-API driver (qmark style, ``?``).

The only things built into the text are identifiers that ``target.py`` checked (and that are
bracket-quoted here), SQL types from its allow-list, and the generated Python script (as an
``N'...'`` literal with its quotes doubled). Every other value -- model name, version, hash,
payload, the deployment document -- is a ``?`` parameter, listed by ``Statement.parameters``.

How a procedure finds its model: the model table is keyed by (model name, version) and the
model name is a manifest value, so it may not be written into the procedure's text. It is
kept instead in the procedure's extended property ``tdsp_model_name``, set with a parameter
(``bind_model_name``); the procedure reads it through ``@@PROCID``. ``CREATE OR ALTER`` keeps
extended properties, so re-deploying does not lose the binding.

Order of execution (``deployment_statements``): model table, model row, the two procedures,
the binding, then activation -- so a procedure never points at a version that is not there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.sqlserver.script import model_payload, row_prelude
from tdsp_deploy.backends.sqlserver.target import Column, SqlServerTarget, check_identifier, quote_identifier

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

MODEL_NAME_PROPERTY = "tdsp_model_name"
VERSION_TYPE = "nvarchar(64)"
#: The ``@params`` declaration every scoring call starts with.
MODEL_PARAMS = "@model_bytes varbinary(max), @model_version nvarchar(64)"


@dataclasses.dataclass(frozen=True)
class Statement:
    """One batch to execute, with the names of its ``?`` parameters in order."""

    name: str
    sql: str
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Only statements with parameters are checked: a script literal may hold a '?'.
        if self.parameters and self.sql.count("?") != len(self.parameters):
            raise AssertionError(f"{self.name}: {self.sql.count('?')} markers, {len(self.parameters)} names")


# --- quoting helpers ------------------------------------------------------------------------


def _q(name: str) -> str:
    return quote_identifier(check_identifier(name))


def _qualified(target: SqlServerTarget, name: str) -> str:
    return f"{_q(target.schema_)}.{_q(name)}"


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
    return ", ".join(f"{_q(c.name)} {c.type}" for c in columns)


def _result_sets(target: SqlServerTarget) -> str:
    return f"WITH RESULT SETS (({_columns(target.outputs)}, {_q('model_version')} {VERSION_TYPE}))"


# --- the model table ------------------------------------------------------------------------


def create_model_table(target: SqlServerTarget) -> str:
    table = _qualified(target, target.model_table)
    return f"""IF OBJECT_ID({_name_literal(table)}, N'U') IS NULL
CREATE TABLE {table} (
    [name] nvarchar(128) NOT NULL,
    [version] nvarchar(64) NOT NULL,
    [sha256] char(64) NOT NULL,
    [flavor] nvarchar(16) NOT NULL,
    [payload] varbinary(max) NOT NULL,
    [created_at] datetime2 NOT NULL DEFAULT SYSUTCDATETIME(),
    [created_by] nvarchar(128) NOT NULL DEFAULT SUSER_SNAME(),
    [manifest] nvarchar(max) NULL,
    [active] bit NOT NULL DEFAULT 0,
    PRIMARY KEY ([name], [version])
);
"""


INSERT_PARAMETERS = ("name", "version", "sha256", "flavor", "payload", "manifest")


def insert_model(target: SqlServerTarget) -> str:
    """Parameters: name, version, sha256, flavor, payload, manifest. A version already there
    with the same sha256 is left alone (re-running a push is a no-op); with another sha256 the
    batch fails (error 50001): a version's content never changes."""
    table = _qualified(target, target.model_table)
    return f"""DECLARE @name nvarchar(128) = ?, @version nvarchar(64) = ?, @sha256 char(64) = ?,
    @flavor nvarchar(16) = ?, @payload varbinary(max) = ?, @manifest nvarchar(max) = ?;
IF EXISTS (SELECT 1 FROM {table} WHERE [name] = @name AND [version] = @version AND [sha256] <> @sha256)
    THROW 50001, N'this model version is already stored with other content; give the model a new version', 1;
IF NOT EXISTS (SELECT 1 FROM {table} WHERE [name] = @name AND [version] = @version)
    INSERT INTO {table} ([name], [version], [sha256], [flavor], [payload], [manifest], [active])
    VALUES (@name, @version, @sha256, @flavor, @payload, @manifest, 0);
"""


def activate_version(target: SqlServerTarget) -> str:
    """Parameters: name, version. Makes that version the only active one of the model."""
    table = _qualified(target, target.model_table)
    return f"""DECLARE @name nvarchar(128) = ?, @version nvarchar(64) = ?;
IF NOT EXISTS (SELECT 1 FROM {table} WHERE [name] = @name AND [version] = @version)
    THROW 50002, N'this model version is not in the model table; insert it first', 1;
UPDATE {table}
SET [active] = CASE WHEN [version] = @version THEN 1 ELSE 0 END
WHERE [name] = @name;
"""


# --- the scoring procedures -----------------------------------------------------------------


def _load_active_model(target: SqlServerTarget) -> str:
    table = _qualified(target, target.model_table)
    return f"""    SET NOCOUNT ON;
    DECLARE @model_name nvarchar(128), @payload varbinary(max), @version nvarchar(64);
    -- The model this procedure serves: its extended property {MODEL_NAME_PROPERTY}.
    SELECT @model_name = CAST([value] AS nvarchar(128))
    FROM sys.extended_properties
    WHERE [class] = 1 AND [major_id] = @@PROCID AND [minor_id] = 0 AND [name] = {_name_literal(MODEL_NAME_PROPERTY)};
    SELECT TOP (1) @payload = [payload], @version = [version]
    FROM {table}
    WHERE [name] = @model_name AND [active] = 1
    ORDER BY [created_at] DESC;
    IF @payload IS NULL
        THROW 50003, N'no active model version for this procedure; push the model first', 1;
"""


def _endpoint(manifest: ManifestBase) -> str:
    return manifest.name


def create_or_alter_procedure(target: SqlServerTarget, manifest: ManifestBase, script: str) -> str:
    """The batch form: ``EXEC <procedure> @input_query = N'SELECT ...'`` scores the query's rows."""
    procedure = _qualified(target, target.procedure_name(_endpoint(manifest)))
    return f"""CREATE OR ALTER PROCEDURE {procedure}
    @input_query nvarchar(max)
AS
BEGIN
{_load_active_model(target)}    EXEC sp_execute_external_script
        @language = N'Python',
        @script = {script_literal(script)},
        @input_data_1 = @input_query,
        @params = N'{MODEL_PARAMS}',
        @model_bytes = @payload,
        @model_version = @version
    {_result_sets(target)};
END;
"""


def create_or_alter_row_procedure(target: SqlServerTarget, manifest: ManifestBase, script: str) -> str:
    """The single-row form: ``EXEC <procedure>_row @col = value, ...`` with typed parameters."""
    procedure = _qualified(target, target.row_procedure_name(_endpoint(manifest)))
    parameters = ",\n".join(f"    @{c.name} {c.type}" for c in target.inputs)
    declared = ", ".join(f"@{c.name} {c.type}" for c in target.inputs)
    bound = "".join(f",\n        @{c.name} = @{c.name}" for c in target.inputs)
    return f"""CREATE OR ALTER PROCEDURE {procedure}
{parameters}
AS
BEGIN
{_load_active_model(target)}    EXEC sp_execute_external_script
        @language = N'Python',
        @script = {script_literal(row_prelude(target.inputs) + script)},
        @params = N'{MODEL_PARAMS}, {declared}',
        @model_bytes = @payload,
        @model_version = @version{bound}
    {_result_sets(target)};
END;
"""


def bind_model_name(target: SqlServerTarget, manifest: ManifestBase) -> str:
    """Parameter: the model name. Sets ``tdsp_model_name`` on both scoring procedures."""
    schema = target.schema_
    parts = ["DECLARE @model_name sql_variant = CAST(? AS nvarchar(128));"]
    for name in (target.procedure_name(_endpoint(manifest)), target.row_procedure_name(_endpoint(manifest))):
        where = (
            f"[class] = 1 AND [major_id] = OBJECT_ID({_name_literal(_qualified(target, name))}) "
            f"AND [minor_id] = 0 AND [name] = {_name_literal(MODEL_NAME_PROPERTY)}"
        )
        arguments = (
            f"@name = {_name_literal(MODEL_NAME_PROPERTY)}, @value = @model_name, "
            f"@level0type = N'SCHEMA', @level0name = {_name_literal(check_identifier(schema))}, "
            f"@level1type = N'PROCEDURE', @level1name = {_name_literal(check_identifier(name))}"
        )
        parts.append(
            f"IF EXISTS (SELECT 1 FROM sys.extended_properties WHERE {where})\n"
            f"    EXEC sys.sp_updateextendedproperty {arguments};\n"
            f"ELSE\n"
            f"    EXEC sys.sp_addextendedproperty {arguments};"
        )
    return "\n".join(parts) + "\n"


# --- probes ---------------------------------------------------------------------------------


def probe_configuration() -> str:
    """1 when Machine Learning Services may run scripts (sp_configure 'external scripts enabled')."""
    return "SELECT [value_in_use] FROM sys.configurations WHERE [name] = N'external scripts enabled';\n"


def probe_permission() -> str:
    """1 when the current user may run external scripts in this database."""
    return "SELECT HAS_PERMS_BY_NAME(NULL, N'DATABASE', N'EXECUTE ANY EXTERNAL SCRIPT') AS [allowed];\n"


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
    library is not installed; the first row is ``python``."""
    return f"""EXEC sp_execute_external_script
    @language = N'Python',
    @script = {script_literal(PROBE_PYTHON_SCRIPT)},
    @params = N'@libraries nvarchar(max)',
    @libraries = ?
WITH RESULT SETS (([name] nvarchar(256), [version] nvarchar(128)));
"""


# --- everything, in order -------------------------------------------------------------------


def deployment_statements(target: SqlServerTarget, manifest: ManifestBase, script: str) -> list[Statement]:
    """The batches of a deployment, in execution order, with their parameters' names."""
    return [
        Statement("create_model_table", create_model_table(target)),
        Statement("insert_model", insert_model(target), INSERT_PARAMETERS),
        Statement("create_procedure", create_or_alter_procedure(target, manifest, script)),
        Statement("create_row_procedure", create_or_alter_row_procedure(target, manifest, script)),
        Statement("bind_model_name", bind_model_name(target, manifest), ("name",)),
        Statement("activate_version", activate_version(target), ("name", "version")),
    ]


def deployment_document(target: SqlServerTarget, manifest: ManifestBase, lock: PackageLock) -> str:
    """The JSON kept in the model row's ``manifest`` column: what was deployed, from what."""
    doc = {
        "endpoint": manifest.name,
        "package_id": lock.package_id,
        "model": lock.model.to_json(),
        "flavor": manifest.model.flavor,
        "procedure": target.procedure_name(manifest.name),
        "inputs": [c.model_dump() for c in target.inputs],
        "outputs": [c.model_dump() for c in target.outputs],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def parameter_values(
    target: SqlServerTarget, manifest: ManifestBase, lock: PackageLock, payload: bytes
) -> dict[str, Any]:
    """The values of the named parameters. ``sha256`` is the payload's own hash, so the server
    can check it: ``HASHBYTES('SHA2_256', payload)``."""
    flavor = manifest.model.flavor
    if flavor is None:
        raise ValueError("model.flavor is required on the sqlserver target (sklearn, onnx or mlflow)")
    return {
        "name": manifest.model_name,
        "version": lock.model.version,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "flavor": flavor,
        "payload": payload,
        "manifest": deployment_document(target, manifest, lock),
    }


def render_tsql(
    target: SqlServerTarget,
    manifest: ManifestBase,
    script: str,
    lock: PackageLock,
    out_dir: Path,
    *,
    payload: bytes | None = None,
) -> list[Path]:
    """Write what a deployment executes, for review: ``NN-<statement>.sql`` in execution order,
    ``model.bin`` (the payload exactly as inserted) and ``parameters.json`` (each statement's
    parameters, in order; the payload as ``model.bin`` with its sha256)."""
    if payload is None:
        payload = model_payload(Path(manifest.model.path), manifest.model.flavor or "")[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = parameter_values(target, manifest, lock, payload)
    written: list[Path] = []
    listing: dict[str, list[dict[str, Any]]] = {}
    for number, statement in enumerate(deployment_statements(target, manifest, script), start=1):
        path = out / f"{number:02d}-{statement.name}.sql"
        path.write_text(statement.sql, encoding="utf-8", newline="\n")
        written.append(path)
        listing[path.name] = [
            {"name": p, "value": "model.bin" if p == "payload" else values[p]} for p in statement.parameters
        ]
    model_bin = out / "model.bin"
    model_bin.write_bytes(payload)
    parameters = out / "parameters.json"
    parameters.write_text(json.dumps(listing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [*written, model_bin, parameters]
