"""The sqlserver target: in-database scoring with SQL Server Machine Learning Services.

What it adds to the SQL core (backends/sql/): the model runs in Python through
``sp_execute_external_script`` (script.py writes the script, tsql.py the procedures); a push
first checks the server (external scripts enabled, EXECUTE ANY EXTERNAL SCRIPT, and the server's
Python libraries against the package lock; ``force`` lets a mismatch through with a warning),
then runs everything in ONE transaction (SQL Server runs DDL inside one): the tables, the model
row, both procedures (batch and single row) and the slot, with no traffic. A database made when
the rows were keyed by the model's name is migrated on first use (migrate.py). Undo puts back
the procedures' previous definitions and the traffic table's rows. The endpoint lock is an
application lock on the server (applock.py). The request log is the core's (a row per call and
slot); here the script writes it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import Capabilities, ProgressEvent, SlotStatus, no_progress
from tdsp_deploy.backends.base import json_answer  # noqa: F401 (tests import it from here)
from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sql.backend import Answer, Rows, SqlBackend
from tdsp_deploy.backends.sql.document import document_id, with_slot
from tdsp_deploy.backends.sql.requests import (  # noqa: F401 (the target's names, as tests import them)
    INPUT_TABLE,
    check_traffic_request,
    first_value_true,
    request_rows,
)
from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget, quote_identifier
from tdsp_deploy.errors import BackendError, DeploymentFailed, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.sql.connection import SqlConnection
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage
    from tdsp_deploy.packaging.lock import PackageLock

#: libraries whose pickles break across major/minor versions, per model flavor
PICKLE_LIBRARIES = {"sklearn": ("scikit-learn", "numpy")}
STEP_MESSAGES = {
    "create_model_table": "model table {table}",
    "create_traffic_table": "traffic table",
    "create_request_log_table": "request log table",
    "insert_model": "storing model {model} ({size} bytes) unless that version is there",
    "create_procedure": "creating or altering procedure {procedure}",
    "create_row_procedure": "creating or altering its single-row twin",
    "assign_slot": "slot {slot} serves {model} (no traffic yet)",
    "refresh_active": "marking the versions that take traffic",
}


@dataclasses.dataclass
class _Undo:
    """What deploy_slot changed, as it was before: for discard_slot."""

    definitions: dict[str, str | None]  # procedure -> its definition (None: did not exist)
    slots: list[dict[str, Any]]  # the model's traffic rows


class SqlServerBackend(SqlBackend):
    """SQL Server (2019+) or Azure SQL Managed Instance with Machine Learning Services."""

    kind = "sqlserver"
    target_model = SqlServerTarget
    extra = "sqlserver"
    requires = ("mssql_python",)
    #: the scoring procedures route rows by weight (traffic table); nothing copies them;
    #: a library mismatch that may break unpickling is refused unless --force
    capabilities = Capabilities(weighted_traffic=True, forceable_preflight=True)
    CONNECTION = SqlServerConnection
    WHO = "the sqlserver target"
    GRANT_HINT = "GRANT EXECUTE ON the procedure to the callers' database users"
    LOGGED = "the procedures log no requests"
    INPUT_ARGUMENT = f"@input_query = N'SELECT * FROM {INPUT_TABLE}'"

    def __init__(
        self,
        manifest: ManifestBase,
        *,
        progress: Progress = no_progress,
        connection: Any = None,
        force: bool = False,
    ):
        super().__init__(manifest, progress=progress, connection=connection)
        self.target: SqlServerTarget
        self.force = force

    def _migrate(self, conn: SqlConnection) -> None:
        """A database of an earlier version, brought to the one schema (migrate.py)."""
        from tdsp_deploy.backends.sqlserver import migrate

        migrate.migrate(conn, self.tables, _create_or_alter, self.tell)

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """An application lock on the server, owned by this session (see applock.py)."""
        from tdsp_deploy.backends.sqlserver.applock import ApplicationLock, resource_name

        def told(message: str) -> None:
            self.progress(ProgressEvent(step="lock", message=message))

        return ApplicationLock(
            self.connection,
            resource_name(self.target.database, self._procedure_name()),
            endpoint=self.manifest.name,
            timeout=timeout,
            on_wait=told,
        )

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Pre-flight probes, then tsql.deployment_statements in one transaction: the tables,
        the model row (skipped when that version with that sha256 is stored), both procedures,
        the slot pointed at the version (no traffic when new). Nothing
        is written when any of it fails."""
        from tdsp_deploy.backends.sqlserver import tsql

        lock = package.lock
        self._probe(lock)
        payload, script = self._payload_and_script(package)
        values = tsql.parameter_values(self.target, self.manifest, lock, payload, slot=slot)
        # the deployment document, plus the slot it was pushed as (read back by logs)
        values["manifest"] = with_slot(values["manifest"], slot)
        undo = _Undo(
            definitions={name: self._definition(name) for name in self._procedure_names()},
            slots=self._slots(),
        )
        conn = self.connection
        with conn.transaction():
            for statement in tsql.deployment_statements(self.target, self.manifest, script):
                self.tell(
                    "deploy",
                    STEP_MESSAGES.get(statement.name, statement.name).format(
                        table=self.tables.models,
                        procedure=self._procedure_name(),
                        model=f"{self.manifest.model_name}:{lock.model_version}",
                        size=len(payload),
                        slot=slot,
                    ),
                )
                conn.execute(
                    statement.sql,
                    [values[name] for name in statement.parameters],
                    doing=statement.name.replace("_", " "),
                )
        self._replaced[slot] = undo
        return SlotStatus(
            name=slot,
            state="starting",
            model_version=lock.model_version,
            package_id=package.package_id,
            config_id=self.config_id(package),
        )

    def config_id(self, package: BuiltPackage) -> str:
        """The hash of the deployment document (package, flavor, procedure, inputs, outputs):
        stored with the model row, so ``status`` can tell what the active version runs."""
        from tdsp_deploy.backends.sqlserver import tsql

        return document_id(tsql.deployment_document(self.target, self.manifest, package.lock))

    def _undo(self, slot: str, undo: _Undo) -> None:
        """In one transaction: the procedures get their previous definitions back and the
        traffic table its previous rows; after a first push (no slot before), the procedures
        and this model's rows go."""
        if not undo.slots:
            self.tell("rollback", f"removing procedure {self._procedure_name()} and the model rows")
            self._remove_endpoint()
            return
        self.tell("rollback", f"restoring the procedures and the slots as they were before {slot}")
        conn = self.connection
        with conn.transaction():
            for procedure, definition in undo.definitions.items():
                if definition is None:
                    conn.execute(f"DROP PROCEDURE IF EXISTS {procedure}", doing="drop the procedure")
                else:
                    conn.execute(_create_or_alter(definition), doing="restore the procedure")
            self._restore_slots(undo.slots)
            conn.execute(
                sql_rows.refresh_active(self.tables), (self._key(),), doing="restore the active versions"
            )

    # -- reviewing -----------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """The T-SQL a push would run, its parameters and the model payload (tsql.render_tsql)."""
        from tdsp_deploy.backends.sqlserver import tsql

        payload, script = self._payload_and_script(package)
        return tsql.render_tsql(self.target, self.manifest, script, package.lock, out_dir, payload=payload)

    # -- what the core asks of this engine --------------------------------------------------
    def _input_rows(self, rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[Any]]:
        return input_rows(self.target, rows)

    def _answer(self, columns: list[str], result: Rows, slot: str | None, serving: dict[str, Any]) -> Answer:
        versions = sorted({str(r[-1]) for r in result}) if result else []
        slots = [slot] if slot else sorted({s for v in versions for s in serving.get(v, [])})
        return {"columns": columns, "data": [list(r) for r in result]}, slots

    def _endpoint_details(self) -> dict[str, Any]:
        return {**super()._endpoint_details(), "procedure_sha256": self._definition_hash()}

    def _remove_endpoint(self) -> None:
        """In one transaction: both procedures, and this model's rows of the three tables."""
        conn, tables = self.connection, self.tables
        with conn.transaction():
            for procedure in self._procedure_names():
                conn.execute(f"DROP PROCEDURE IF EXISTS {procedure}", doing="drop the procedure")
            for table in (tables.models, tables.traffic, tables.requests):
                if self._exists(table, "U"):
                    statement = sql_rows.delete_rows(tables, table)
                    conn.execute(statement, (self._key(),), doing="delete the model rows")

    # -- internals -----------------------------------------------------------------------
    def _probe(self, lock: PackageLock) -> None:
        from tdsp_deploy.backends.sqlserver import tsql

        conn = self.connection
        self.tell("deploy", "checking that external scripts are enabled")
        if not first_value_true(conn.execute(tsql.probe_configuration(), doing="read the configuration")):
            from tdsp_deploy.backends.sql.errors import ENABLE_HINT

            raise DeploymentFailed(
                f"'external scripts enabled' is off on {self.target.server}", hint=ENABLE_HINT
            )
        if not first_value_true(conn.execute(tsql.probe_permission(), doing="check permissions")):
            from tdsp_deploy.backends.sql.errors import PERMISSION_HINT

            raise BackendError(
                f"the login may not run external scripts on {self.target.database} "
                "(EXECUTE ANY EXTERNAL SCRIPT is missing)",
                hint=PERMISSION_HINT,
            )
        wanted = PICKLE_LIBRARIES.get(self._flavor(), ())
        columns, rows = conn.query(
            tsql.probe_python(), (",".join(wanted),), doing="read the server's Python libraries"
        )
        server = library_versions(columns, rows)
        # SQL Server 2022 and later ship no Python: the runtime is the one the DBA installed
        # (3.10 is the version Microsoft tests), so its version is shown with the libraries'.
        python = server.get("python", "unknown")
        found = ", ".join(f"{library} {server.get(library, 'missing')}" for library in wanted)
        self.tell("deploy", f"the server runs Python {python}" + (f" with {found}" if found else ""))
        mismatches = []
        for library in PICKLE_LIBRARIES.get(self._flavor(), ()):
            built = lock.libraries.get(library)
            found = server.get(library)
            if built and _major_minor(built) != _major_minor(found):
                mismatches.append(f"{library} {built} here, {found or 'missing'} on the server")
        if mismatches and not self.force:
            raise DeploymentFailed(
                f"the server's Python ({python}) cannot be trusted to unpickle this model: "
                + "; ".join(mismatches),
                hint="install the same major.minor versions on the server (sqlmlutils), retrain "
                "with the server's versions, or push with --force",
            )
        for problem in mismatches:
            self.tell("deploy", f"warning: --force: deploying although {problem}; the model may not load")

    def _definition(self, procedure: str) -> str | None:
        rows = self.connection.execute(
            "SELECT OBJECT_DEFINITION(OBJECT_ID(?))", (procedure,), doing="read the procedure"
        )
        return rows[0][0] if rows and rows[0] else None

    def _definition_hash(self) -> str | None:
        import hashlib

        texts = [self._definition(name) or "" for name in self._procedure_names()]
        if not any(texts):
            return None
        return hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()

    def _procedure_names(self) -> list[str]:
        """The batch procedure and its single-row twin."""
        schema = quote_identifier(self.target.schema_)
        endpoint = self.manifest.name
        return [
            f"{schema}.{quote_identifier(self.target.procedure_name(endpoint))}",
            f"{schema}.{quote_identifier(self.target.row_procedure_name(endpoint))}",
        ]

    def _flavor(self) -> str:
        flavor = self.manifest.model.flavor
        if flavor is None:
            raise UsageError(
                "the sqlserver target needs model.flavor", hint="set model.flavor: sklearn (or onnx)"
            )
        return flavor

    def _payload_and_script(self, package: BuiltPackage) -> tuple[bytes, str]:
        from tdsp_deploy.backends.sqlserver.script import generate_script

        payload, model_file = self._model_payload(package)
        script = generate_script(
            self._flavor(),
            self.target.inputs,
            self.target.outputs,
            model_file_name=model_file,
            ab_key=self.target.ab_key,
        )
        return payload, script

    def _model_payload(self, package: BuiltPackage) -> tuple[bytes, str]:
        """(the model table's payload, the model file's name), from the unpacked package."""
        from tdsp_deploy.backends.sqlserver.script import model_payload

        try:
            return model_payload(
                self.unpacked(package, "sqlserver") / package.lock.model.path, self._flavor()
            )
        except ValueError as exc:
            raise UsageError(str(exc), hint="point model.path at the model file") from None


# -- the scoring call -------------------------------------------------------------------------------
def input_rows(target: SqlServerTarget, rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[Any]]:
    """The rows into the #temp table through a VALUES query whose values are bound ``?``
    parameters (never written into the SQL); no rows: a typed empty table (the health probe)."""
    names = ", ".join(quote_identifier(c.name) for c in target.inputs)
    params: list[Any] = []
    if rows:
        groups = []
        for row in rows:
            groups.append("(" + ", ".join(f"CAST(? AS {c.type})" for c in target.inputs) + ")")
            params.extend(row)
        source = f"(VALUES {', '.join(groups)}) AS v({names})"
    else:
        null_row = ", ".join(f"CAST(NULL AS {c.type})" for c in target.inputs)
        source = f"(VALUES ({null_row})) AS v({names}) WHERE 1 = 0"
    return ["SET NOCOUNT ON;", f"SELECT * INTO {INPUT_TABLE} FROM {source};"], params


def library_versions(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """tsql.probe_python's rows (name, version) as library -> version; a library the server
    lacks (version NULL) is left out."""
    from tdsp_deploy.packaging.libraries import canonical

    return {canonical(str(row[0])): str(row[1]) for row in rows if len(row) >= 2 and row[1] is not None}


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    if not version:
        return None
    return tuple(version.split(".")[:2])


def _create_or_alter(definition: str) -> str:
    """A stored procedure definition, made re-runnable: CREATE becomes CREATE OR ALTER."""
    return re.sub(
        r"^(\s*)CREATE\s+(?!OR\s+ALTER\b)(PROC(?:EDURE)?\b)",
        r"\1CREATE OR ALTER \2",
        definition,
        count=1,
        flags=re.I,
    )
