"""The sqlserver target: in-database scoring with SQL Server Machine Learning Services.

Everything goes through ``SqlServerConnection`` (connection.py), the one door to the server;
tests hand in a fake DB-API connection. The T-SQL itself comes from tsql.py, the Python run by
``sp_execute_external_script`` from script.py. This module imports no driver.

How the backend contract maps onto SQL Server:

- the endpoint is the scoring procedure; its model versions are rows of the model table, one
  of them active. The endpoint has one slot: the one whose version is active, taking all the
  traffic (``supports_weighted_traffic`` is False until the routing procedure over versions
  exists: ``set_traffic`` accepts only the split that is already the case);
- a push checks the server first (external scripts enabled, EXECUTE ANY EXTERNAL SCRIPT, and
  the server's Python libraries against the package lock), then in ONE transaction creates
  the model table if missing, inserts the model (skipped when that version with that sha256
  is there), creates or alters the procedure and activates the version: a failure leaves
  nothing half-written;
- undo re-activates the version that was active before (or removes what a first push made).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import (
    Backend,
    Caller,
    EndpointStatus,
    InvokeResult,
    ProgressEvent,
    SlotStatus,
    no_progress,
)
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage
    from tdsp_deploy.packaging.lock import PackageLock

#: libraries whose pickles break across major/minor versions, per model flavor
PICKLE_LIBRARIES = {"sklearn": ("scikit-learn", "numpy")}
INPUT_TABLE = "#tdsp_input"
STEP_MESSAGES = {
    "create_model_table": "model table {table}",
    "insert_model": "storing model {model} ({size} bytes) unless that version is there",
    "create_procedure": "creating or altering procedure {procedure}",
    "create_row_procedure": "creating or altering its single-row twin",
    "bind_model_name": "binding the procedures to model {model}",
    "activate_version": "activating {model}",
}
_FIRST = object()  # marks a slot that had no active version before deploy_slot


class SqlServerBackend(Backend):
    """SQL Server (2019+) or Azure SQL Managed Instance with Machine Learning Services."""

    kind = "sqlserver"
    target_model = SqlServerTarget
    extra = "sqlserver"
    requires = ("mssql_python",)
    #: one active model version takes all calls; a weighted routing procedure is not built yet
    supports_weighted_traffic = False
    supports_mirror = False

    def __init__(
        self,
        manifest: ManifestBase,
        *,
        progress: Progress = no_progress,
        connection: Any = None,
        force: bool = False,
    ):
        super().__init__(manifest, progress=progress)
        self.target: SqlServerTarget
        self.force = force
        self._connection: SqlServerConnection | None = None
        self._shared = connection is not None  # handed in: never closed, shared by callers
        if connection is not None:
            from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

            self._connection = (
                connection if isinstance(connection, SqlServerConnection) else SqlServerConnection(connection)
            )
        # slot -> the version active before deploy_slot (or _FIRST), for discard_slot
        self._replaced: dict[str, Any] = {}

    @property
    def connection(self) -> SqlServerConnection:
        """The connection, opened on first use (never when a test handed one in)."""
        if self._connection is None:
            from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

            self._connection = SqlServerConnection.connect(self.target)
        return self._connection

    # -- reading -------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """The procedure and the model versions; the active one is the endpoint's one slot."""
        procedure = self._procedure_exists()
        versions = self._versions()
        name = self.manifest.name
        if not procedure and not versions:
            return EndpointStatus(name=name, kind=self.kind, exists=False)
        slots = []
        active = next((v for v in versions if v["active"]), None)
        if active is not None:
            slots.append(
                SlotStatus(
                    name=active["slot"] or "blue",
                    state="healthy" if procedure else "stopped",
                    traffic=100 if procedure else 0,
                    model_version=active["version"],
                    package_id=active["package_id"],
                    config_id=active["config_id"],
                    details={"sha256": active["sha256"]},
                )
            )
        return EndpointStatus(
            name=name,
            kind=self.kind,
            exists=True,
            scoring_uri=self._scoring_uri(),
            slots=slots,
            details={
                "procedure": self._procedure_name(),
                "model_table": self._table_name(),
                "versions": [
                    {"version": v["version"], "sha256": v["sha256"], "active": v["active"]} for v in versions
                ],
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """Not available: SQL Server keeps no per-procedure log an ordinary user can read."""
        raise UsageError(
            "the sqlserver target has no slot log",
            hint="read the Launchpad log (ExtensibilityLog) on the server, or run the procedure in SSMS",
        )

    def credentials(self) -> dict[str, str]:
        """None: callers authenticate to the database itself (target.auth)."""
        raise UsageError(
            "the sqlserver target has no endpoint keys: callers use database authentication",
            hint="GRANT EXECUTE ON the procedure to the callers' database users",
        )

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Pre-flight probes, then tsql.deployment_statements in one transaction: model table,
        model row (skipped when that version with that sha256 is stored), both procedures, the
        model-name binding, the active version. Nothing is written when any of it fails."""
        from tdsp_deploy.backends.sqlserver import tsql

        lock = package.lock
        self._probe(lock)
        payload, script = self._payload_and_script(package)
        values = tsql.parameter_values(self.target, self.manifest, lock, payload)
        # the deployment document, plus the slot it was pushed as (read back by status)
        values["manifest"] = json.dumps(
            {**json.loads(values["manifest"]), "slot": slot}, sort_keys=True, separators=(",", ":")
        )
        before = next((v for v in self._versions() if v["active"]), None)
        conn = self.connection
        with conn.transaction():
            for statement in tsql.deployment_statements(self.target, self.manifest, script):
                self._tell(
                    "deploy",
                    STEP_MESSAGES.get(statement.name, statement.name).format(
                        table=self._table_name(),
                        procedure=self._procedure_name(),
                        model=f"{self.manifest.model_name}:{lock.model_version}",
                        size=len(payload),
                    ),
                )
                conn.execute(
                    statement.sql,
                    [values[name] for name in statement.parameters],
                    doing=statement.name.replace("_", " "),
                )
        self._replaced[slot] = before["version"] if before is not None else _FIRST
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

        return _document_id(tsql.deployment_document(self.target, self.manifest, package.lock))

    def wait_healthy(self, slot: str) -> SlotStatus:
        """EXEC the procedure on a probe: the first row of the smoke request when there is
        one (a scikit-learn model refuses zero rows), else zero rows. It loads the model in
        Python and answers, or the script's error says why not."""
        started = time.monotonic()
        self._score(self._probe_rows(), doing="probe the scoring procedure")
        found = self.status().slot(slot)
        if found is None or found.state != "healthy":
            raise DeploymentFailed(f"slot '{slot}' is not the active version after the deploy")
        self._tell("health", f"{slot} answers", elapsed=time.monotonic() - started)
        return found

    def finalize_slot(self, slot: str) -> None:
        """Older versions stay in the table (rollback material); only the undo note goes."""
        self._replaced.pop(slot, None)

    def discard_slot(self, slot: str) -> None:
        """Re-activate the version active before ``deploy_slot``; after a first push, remove
        the procedure and this model's rows. Limitation: the procedure keeps the new
        definition (same inputs/outputs unless the manifest changed them)."""
        replaced = self._replaced.pop(slot, None)
        if replaced is None:  # unknown history (a later command): the newest other version
            versions = self._versions()
            others = [v for v in versions if not v["active"]]
            replaced = others[-1]["version"] if others else _FIRST
        if replaced is _FIRST:
            self._tell("rollback", f"removing procedure {self._procedure_name()} and the model rows")
            self._remove(rows=True)
            return
        self._tell("rollback", f"re-activating model version {replaced}")
        with self.connection.transaction():
            self._activate(replaced)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Only the split that is already the case (all calls to the active version) is accepted."""
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist", hint="push first")
        wanted = {k: v for k, v in traffic.items() if v}
        if wanted == {k: v for k, v in status.traffic.items() if v} and not any((mirror or {}).values()):
            return
        raise UsageError(
            "the sqlserver target cannot split traffic yet: the active model version takes every call",
            hint="push with rollout.traffic 100, or `tdsp-deploy rollback` to re-activate an older version",
        )

    def delete(self, slot: str | None = None) -> None:
        """Drop the procedure; with the whole endpoint (``slot`` None), this model's rows too."""
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist")
        if slot is not None and status.slot(slot) is None:
            raise UsageError(
                f"endpoint '{self.manifest.name}' has no slot '{slot}'",
                hint=f"slots: {', '.join(s.name for s in status.slots) or 'none'}",
            )
        self._remove(rows=slot is None)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that EXEC the procedure with the request's rows (bound ``?`` parameters),
        one connection each (or the handed-in one, shared). The active version answers;
        a slot that is not it is refused."""
        if slot is not None:
            found = self.status().slot(slot)
            if found is None:
                raise UsageError(f"slot '{slot}' is not the active model version of '{self.manifest.name}'")
        return self._callers()

    @contextlib.contextmanager
    def _callers(self) -> Iterator[Iterator[Caller]]:
        from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

        opened: list[SqlServerConnection] = []

        def made() -> Iterator[Caller]:
            while True:
                if self._shared:
                    conn = self.connection
                else:
                    conn = SqlServerConnection.connect(self.target)
                    opened.append(conn)
                yield self._caller(conn)

        try:
            yield made()
        finally:
            for conn in opened:
                conn.close()

    def _caller(self, conn: SqlServerConnection) -> Caller:
        def call(body: bytes) -> InvokeResult:
            started = time.perf_counter()
            try:
                rows = request_rows(body, [c.name for c in self.target.inputs])
            except ValueError as exc:
                return _result(400, {"error": str(exc)}, started)
            try:
                columns, result = self._score(rows, conn=conn, doing="score")
            except DeploymentFailed as exc:  # the script failed: an answer, not a crash
                return _result(500, {"error": exc.message}, started)
            return _result(200, {"columns": columns, "data": [list(r) for r in result]}, started)

        return call

    # -- reviewing -----------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """The T-SQL a push would run, its parameters and the model payload (tsql.render_tsql)."""
        from tdsp_deploy.backends.sqlserver import tsql

        payload, script = self._payload_and_script(package)
        return tsql.render_tsql(self.target, self.manifest, script, package.lock, out_dir, payload=payload)

    # -- internals -----------------------------------------------------------------------
    def _probe(self, lock: PackageLock) -> None:
        from tdsp_deploy.backends.sqlserver import tsql

        conn = self.connection
        self._tell("deploy", "checking that external scripts are enabled")
        if not _truthy(conn.execute(tsql.probe_configuration(), doing="read the configuration")):
            from tdsp_deploy.backends.sqlserver.connection import ENABLE_HINT

            raise DeploymentFailed(
                f"'external scripts enabled' is off on {self.target.server}", hint=ENABLE_HINT
            )
        if not _truthy(conn.execute(tsql.probe_permission(), doing="check permissions")):
            from tdsp_deploy.backends.sqlserver.connection import PERMISSION_HINT

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
        mismatches = []
        for library in PICKLE_LIBRARIES.get(self._flavor(), ()):
            built = lock.libraries.get(library)
            found = server.get(library)
            if built and _major_minor(built) != _major_minor(found):
                mismatches.append(f"{library} {built} here, {found or 'missing'} on the server")
        if mismatches and not self.force:
            raise DeploymentFailed(
                "the server's Python cannot be trusted to unpickle this model: " + "; ".join(mismatches),
                hint="install the same major.minor versions on the server (sqlmlutils), retrain "
                "with the server's versions, or push with --force",
            )
        for problem in mismatches:
            self._tell("deploy", f"warning (forced): {problem}")

    def _probe_rows(self) -> list[list[Any]]:
        smoke = self.manifest.smoke_test
        if smoke is None:
            return []
        try:
            return request_rows(smoke.request.read_bytes(), [c.name for c in self.target.inputs])[:1]
        except (OSError, ValueError):
            return []  # the smoke test itself will say what is wrong with the request

    def _score(
        self, rows: Sequence[Sequence[Any]], *, conn: SqlServerConnection | None = None, doing: str
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        sql, params = scoring_batch(self.target, self.manifest.name, rows)
        return (conn or self.connection).query(sql, params, doing=doing)

    def _activate(self, version: str) -> None:
        from tdsp_deploy.backends.sqlserver import tsql

        self._tell("deploy", f"activating version {version}")
        self.connection.execute(
            tsql.activate_version(self.target),
            (self.manifest.model_name, version),
            doing="activate the version",
        )

    def _remove(self, *, rows: bool) -> None:
        conn = self.connection
        with conn.transaction():
            for procedure in self._procedure_names():
                conn.execute(f"DROP PROCEDURE IF EXISTS {procedure}", doing="drop the procedure")
            if rows and self._table_exists():
                conn.execute(
                    f"DELETE FROM {self._table_name()} WHERE [name] = ?",
                    (self.manifest.model_name,),
                    doing="delete the model rows",
                )

    def _versions(self) -> list[dict[str, Any]]:
        if not self._table_exists():
            return []
        rows = self.connection.execute(
            f"SELECT [version], [sha256], [active], [manifest] FROM {self._table_name()} "
            "WHERE [name] = ? ORDER BY [created_at], [version]",
            (self.manifest.model_name,),
            doing="list the model versions",
        )
        versions = []
        for version, sha256, active, record in rows:
            try:
                note = json.loads(record) if record else {}
            except ValueError:
                note = {}
            versions.append(
                {
                    "version": str(version),
                    "sha256": sha256,
                    "active": bool(active),
                    "slot": note.get("slot"),
                    "package_id": note.get("package_id"),
                    "config_id": _document_id(record) if record else None,
                }
            )
        return versions

    def _table_exists(self) -> bool:
        return _truthy(self.connection.execute("SELECT OBJECT_ID(?, N'U')", (self._table_name(),)))

    def _procedure_exists(self) -> bool:
        return _truthy(self.connection.execute("SELECT OBJECT_ID(?, N'P')", (self._procedure_name(),)))

    def _table_name(self) -> str:
        from tdsp_deploy.backends.sqlserver.target import quote_identifier

        return f"{quote_identifier(self.target.schema_)}.{quote_identifier(self.target.model_table)}"

    def _procedure_name(self) -> str:
        from tdsp_deploy.backends.sqlserver.target import quote_identifier

        procedure = self.target.procedure_name(self.manifest.name)
        return f"{quote_identifier(self.target.schema_)}.{quote_identifier(procedure)}"

    def _procedure_names(self) -> list[str]:
        """The batch procedure and its single-row twin."""
        from tdsp_deploy.backends.sqlserver.target import quote_identifier

        schema = quote_identifier(self.target.schema_)
        endpoint = self.manifest.name
        return [
            f"{schema}.{quote_identifier(self.target.procedure_name(endpoint))}",
            f"{schema}.{quote_identifier(self.target.row_procedure_name(endpoint))}",
        ]

    def _scoring_uri(self) -> str:
        return f"mssql://{self.target.server}/{self.target.database}/{self._procedure_name()}"

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
            self._flavor(), self.target.inputs, self.target.outputs, model_file_name=model_file
        )
        return payload, script

    def _model_payload(self, package: BuiltPackage) -> tuple[bytes, str]:
        """(the model table's payload, the model file's name), from the unpacked package."""
        from tdsp_deploy.backends.sqlserver.script import model_payload

        try:
            return model_payload(self._unpacked(package) / package.lock.model.path, self._flavor())
        except ValueError as exc:
            raise UsageError(str(exc), hint="point model.path at the model file") from None

    def _unpacked(self, package: BuiltPackage) -> Path:
        """The package extracted (and checked against its lock) once per content."""
        import shutil

        from tdsp_deploy import paths
        from tdsp_deploy.packaging import extract_package

        root = paths.state_home() / "sqlserver" / "packages" / package.package_id
        if (root / "package.json").is_file():
            return root
        if root.exists():  # an extraction that did not finish
            shutil.rmtree(root)
        extract_package(package.path, root)
        return root

    def _tell(self, step: str, message: str, **numbers: Any) -> None:
        self.progress(ProgressEvent(step=step, message=message, **numbers))


# -- the scoring call -------------------------------------------------------------------------------
def request_rows(body: bytes, inputs: Sequence[str]) -> list[list[Any]]:
    """The rows of a JSON table request (``{"columns": [...], "data": [[...]]}``), in the
    order of the procedure's inputs. ValueError says what is wrong."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError('the request must be {"columns": [...], "data": [[...], ...]}')
    columns = doc.get("columns") or list(inputs)
    missing = [name for name in inputs if name not in columns]
    if missing:
        raise ValueError(f"the request has no column {', '.join(missing)}")
    order = [columns.index(name) for name in inputs]
    rows = []
    for number, row in enumerate(doc["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"data[{number}] must be a list of {len(columns)} values")
        rows.append([row[i] for i in order])
    return rows


def scoring_batch(
    target: SqlServerTarget, endpoint: str, rows: Sequence[Sequence[Any]]
) -> tuple[str, list[Any]]:
    """One batch: the rows into a temporary table through a VALUES query whose values are
    bound ``?`` parameters (never written into the SQL), then EXEC of the procedure with an
    ``@input_query`` that reads that table. No rows: a typed empty table (the health probe)."""
    from tdsp_deploy.backends.sqlserver.target import quote_identifier

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
    procedure = f"{quote_identifier(target.schema_)}.{quote_identifier(target.procedure_name(endpoint))}"
    sql = (
        "SET NOCOUNT ON;\n"
        f"SELECT * INTO {INPUT_TABLE} FROM {source};\n"
        f"EXEC {procedure} @input_query = N'SELECT * FROM {INPUT_TABLE}';\n"
        f"DROP TABLE {INPUT_TABLE};"
    )
    return sql, params


def library_versions(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """tsql.probe_python's rows (name, version) as library -> version; a library the server
    lacks (version NULL) is left out."""
    from tdsp_deploy.packaging.libraries import canonical

    return {canonical(str(row[0])): str(row[1]) for row in rows if len(row) >= 2 and row[1] is not None}


def _document_id(document: str) -> str:
    """The config_id of a deployment document (without the slot it was pushed as)."""
    import hashlib

    try:
        doc = json.loads(document)
    except ValueError:
        return ""
    if isinstance(doc, dict):
        doc.pop("slot", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    if not version:
        return None
    return tuple(version.split(".")[:2])


def _truthy(rows: Sequence[Sequence[Any]]) -> bool:
    return bool(rows) and bool(rows[0]) and rows[0][0] not in (None, 0, False, "0")


def _result(status: int, doc: Any, started: float) -> InvokeResult:
    return InvokeResult(
        status=status,
        body=json.dumps(doc, default=str).encode(),
        headers={"content-type": "application/json"},
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )
