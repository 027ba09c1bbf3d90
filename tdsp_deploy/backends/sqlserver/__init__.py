"""The sqlserver target: in-database scoring with SQL Server Machine Learning Services.

Everything goes through ``SqlServerConnection`` (connection.py), the one door to the server;
tests hand in a fake DB-API connection. The T-SQL itself comes from tsql.py, the Python run by
``sp_execute_external_script`` from script.py. This module imports no driver.

How the backend contract maps onto SQL Server:

- the endpoint is the pair of scoring procedures; its model versions are rows of the model
  table. A deployment slot (blue, green, ...) is a row of the traffic table: the version it
  serves and its traffic weight. The procedures route each call: pinned with ``@slot`` to
  that slot, else each row to a slot with a weight, by a hash of its key (``target.ab_key``,
  else its input values), and log what answered in the request log table;
- a push checks the server first (external scripts enabled, EXECUTE ANY EXTERNAL SCRIPT, and
  the server's Python libraries against the package lock; ``force`` lets a mismatch through
  with a warning), then in ONE transaction creates the tables if missing, inserts the model
  (skipped when that version with that sha256 is there), creates or alters the procedures and
  points the slot at the version, with no traffic: a failure leaves nothing half-written;
- ``set_traffic`` writes every slot's weight in one transaction; the server refuses weights
  that do not add up to 100;
- undo puts back what ``deploy_slot`` changed: the procedures' previous definitions and the
  traffic table's rows (or, after a first push, removes what it made).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import (
    Backend,
    Caller,
    Capabilities,
    EndpointStatus,
    InvokeResult,
    ProgressEvent,
    SlotStatus,
    json_answer,
    no_progress,
    refuse_unless_deletable,
)
from tdsp_deploy.backends.sqlserver.target import Column, SqlServerTarget
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
    "create_traffic_table": "traffic table",
    "create_request_log_table": "request log table",
    "insert_model": "storing model {model} ({size} bytes) unless that version is there",
    "create_procedure": "creating or altering procedure {procedure}",
    "create_row_procedure": "creating or altering its single-row twin",
    "bind_model_name": "binding the procedures to model {model}",
    "assign_slot": "slot {slot} serves {model} (no traffic yet)",
    "refresh_active": "marking the versions that take traffic",
}
#: request log rows read per query by request_records
LOG_PAGE = 5000


@dataclasses.dataclass
class _Undo:
    """What deploy_slot changed, as it was before: for discard_slot."""

    definitions: dict[str, str | None]  # procedure -> its definition (None: did not exist)
    slots: list[dict[str, Any]]  # the model's traffic rows


class SqlServerBackend(Backend):
    """SQL Server (2019+) or Azure SQL Managed Instance with Machine Learning Services."""

    kind = "sqlserver"
    target_model = SqlServerTarget
    extra = "sqlserver"
    requires = ("mssql_python",)
    #: the scoring procedures route rows by weight (traffic table); nothing copies them;
    #: a library mismatch that may break unpickling is refused unless --force
    capabilities = Capabilities(weighted_traffic=True, forceable_preflight=True)

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
        # slot -> what deploy_slot changed, for discard_slot
        self._replaced: dict[str, _Undo] = {}

    @property
    def connection(self) -> SqlServerConnection:
        """The connection, opened on first use (never when a test handed one in)."""
        if self._connection is None:
            from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

            self._connection = SqlServerConnection.connect(self.target)
        return self._connection

    # -- reading -------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """The procedures, the model versions, and the slots of the traffic table."""
        procedure = self._procedure_exists()
        versions = self._versions()
        name = self.manifest.name
        if not procedure and not versions:
            return EndpointStatus(name=name, kind=self.kind, exists=False)
        by_version = {v["version"]: v for v in versions}
        slots = []
        for route in self._slots():
            version = by_version.get(route["version"])
            slots.append(
                SlotStatus(
                    name=route["slot"],
                    state="healthy" if procedure and version is not None else "stopped",
                    traffic=route["weight"] if procedure else 0,
                    model_version=route["version"],
                    package_id=version["package_id"] if version else None,
                    config_id=version["config_id"] if version else None,
                    details={"sha256": version["sha256"] if version else None},
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
                "procedure_sha256": self._definition_hash(),
                "versions": [
                    {"version": v["version"], "sha256": v["sha256"], "active": v["active"]} for v in versions
                ],
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The slot's history as the database keeps it: each model version pushed as this slot
        (when, by whom, its sha256), what it serves now, and the calls it failed (status 500
        in the request log, with the Python error), oldest first; the last ``tail`` lines."""
        routes = {r["slot"]: r for r in self._slots()}
        if slot not in routes:
            raise UsageError(
                f"endpoint '{self.manifest.name}' has no slot '{slot}'",
                hint=f"slots: {', '.join(sorted(routes)) or 'none'}",
            )
        events: list[tuple[datetime.datetime, str]] = []
        model = self.manifest.model_name
        for version in self._versions():
            if version["slot"] == slot:
                events.append(
                    (
                        version["created_at"],
                        f"pushed {model}:{version['version']} (sha256 {str(version['sha256'])[:12]}, "
                        f"by {version['created_by']})",
                    )
                )
        for row in self._failed_calls(slot, limit=tail or 200):
            t, request_id, version, rows, message = row
            events.append(
                (t, f"error: {rows} row(s) of call {request_id} failed on version {version}: {message}")
            )
        events.sort(key=lambda event: event[0])
        lines = [f"{_iso(t)} {slot}: {text}" for t, text in events]
        route = routes[slot]
        lines.append(f"now {slot}: {model}:{route['version']}, {route['weight']}% of traffic")
        return "\n".join(lines[-tail:] if tail else lines)

    def credentials(self) -> dict[str, str]:
        """None: callers authenticate to the database itself (target.auth)."""
        raise UsageError(
            "the sqlserver target has no endpoint keys: callers use database authentication",
            hint="GRANT EXECUTE ON the procedure to the callers' database users",
        )

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
        the model-name binding, the slot pointed at the version (no traffic when new). Nothing
        is written when any of it fails."""
        from tdsp_deploy.backends.sqlserver import tsql

        lock = package.lock
        self._probe(lock)
        payload, script = self._payload_and_script(package)
        values = tsql.parameter_values(self.target, self.manifest, lock, payload, slot=slot)
        # the deployment document, plus the slot it was pushed as (read back by logs)
        values["manifest"] = json.dumps(
            {**json.loads(values["manifest"]), "slot": slot}, sort_keys=True, separators=(",", ":")
        )
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
                        table=self._table_name(),
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

    def wait_healthy(self, slot: str) -> SlotStatus:
        """EXEC the procedure pinned to ``slot`` on a probe: the first row of the smoke
        request when there is one, else zero rows. It loads the slot's model in Python and
        answers, or the script's error says why not."""
        started = time.monotonic()
        self._score(self._probe_rows(), slot=slot, doing="probe the scoring procedure")
        found = self.status().slot(slot)
        if found is None or found.state != "healthy":
            raise DeploymentFailed(f"slot '{slot}' is not serving after the deploy")
        self.tell("health", f"{slot} answers", elapsed=time.monotonic() - started)
        return found

    def finalize_slot(self, slot: str) -> None:
        """Older versions stay in the table (rollback material); only the undo note goes."""
        self._replaced.pop(slot, None)

    def discard_slot(self, slot: str) -> None:
        """Undo ``deploy_slot`` in one transaction: the procedures get their previous
        definitions back and the traffic table its previous rows; after a first push (no
        slot before), the procedures and this model's rows go. Without a note from
        ``deploy_slot`` (another process), a slot without traffic is removed."""
        undo = self._replaced.pop(slot, None)
        if undo is None:
            route = next((r for r in self._slots() if r["slot"] == slot), None)
            if route is not None and route["weight"] == 0:
                self.tell("rollback", f"removing slot {slot}")
                self._delete_slot(slot)
            return
        if not undo.slots:
            self.tell("rollback", f"removing procedure {self._procedure_name()} and the model rows")
            self._remove(rows=True)
            return
        from tdsp_deploy.backends.sqlserver import tsql

        self.tell("rollback", f"restoring the procedures and the slots as they were before {slot}")
        conn = self.connection
        name = self.manifest.model_name
        with conn.transaction():
            for procedure, definition in undo.definitions.items():
                if definition is None:
                    conn.execute(f"DROP PROCEDURE IF EXISTS {procedure}", doing="drop the procedure")
                else:
                    conn.execute(_create_or_alter(definition), doing="restore the procedure")
            conn.execute(
                f"DELETE FROM {self._traffic_table()} WHERE [name] = ?", (name,), doing="restore the slots"
            )
            for route in undo.slots:
                conn.execute(
                    tsql.restore_slot(self.target),
                    (name, route["slot"], route["version"], route["weight"], route["salt"]),
                    doing="restore the slots",
                )
            conn.execute(tsql.refresh_active(self.target), (name,), doing="restore the active versions")

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Every slot's weight (slots not named get 0) in one transaction; the server checks
        that they add up to 100 (or 0) and marks the versions that take traffic active."""
        from tdsp_deploy.backends.sqlserver import tsql

        slots = self._slots()
        check_traffic_request(slots, traffic, mirror, "the sqlserver target", self._procedure_name())
        name = self.manifest.model_name
        conn = self.connection
        with conn.transaction():
            for route in slots:
                weight = int(traffic.get(route["slot"], 0))
                conn.execute(
                    tsql.set_weight(self.target), (name, route["slot"], weight), doing="set the traffic"
                )
            conn.execute(tsql.refresh_active(self.target), (name,), doing="set the traffic")

    def set_experiment(self, experiment_id: str) -> None:
        """A new experiment salts the key hash with its id: keys are shuffled afresh."""
        from tdsp_deploy.backends.sqlserver import tsql

        self.connection.execute(
            tsql.set_salt(self.target),
            (self.manifest.model_name, experiment_id),
            doing="start the experiment",
        )

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """The request log from ``since``: one record per scored row, as the A/B analysis reads
        them (``id``: the row's ab_key value, else ``<request id>:<row number>``)."""
        if not self.target.request_log:
            raise UsageError(
                "target.request_log is off: the procedures log no requests to analyze",
                hint="set target.request_log: true and push again",
            )
        if not self._exists(self._log_table(), "U"):
            return
        started = datetime.datetime.fromtimestamp(since, datetime.UTC).replace(tzinfo=None)
        last = 0
        while True:
            rows = self.connection.execute(
                "SELECT TOP (?) [id], [t], [request_id], [slot], [version], [status], [row_count], "
                f"[latency_ms], [row_keys], [pinned] FROM {self._log_table()} "
                "WHERE [name] = ? AND [t] >= ? AND [id] > ? ORDER BY [id]",
                (LOG_PAGE, self.manifest.model_name, started, last),
                doing="read the request log",
            )
            for row in rows:
                yield from _row_records(*row[1:])
            if len(rows) < LOG_PAGE:
                return
            last = rows[-1][0]

    def delete(self, slot: str | None = None) -> None:
        """One slot (its traffic row; refused while it takes traffic), or the whole endpoint:
        the procedures, and this model's rows in the model, traffic and request log tables."""
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist")
        if slot is None:
            self._remove(rows=True)
            return
        names = (s.name for s in status.slots)
        refuse_unless_deletable(self.manifest.name, slot, status.slot(slot), names, noun="slot")
        self._delete_slot(slot)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that EXEC the procedure with the request's rows (bound ``?`` parameters),
        one connection each (or the handed-in one, shared), pinned to ``slot`` when given.
        The answer names the slot(s) that served it, as the HTTP targets do."""
        routes = self._slots()
        if slot is not None and slot not in {r["slot"] for r in routes}:
            raise UsageError(f"endpoint '{self.manifest.name}' has no slot '{slot}'")
        serving: dict[str, list[str]] = {}
        for route in routes:
            if route["weight"] > 0:
                serving.setdefault(route["version"], []).append(route["slot"])
        return self._callers(slot, serving)

    @contextlib.contextmanager
    def _callers(self, slot: str | None, serving: dict[str, list[str]]) -> Iterator[Iterator[Caller]]:
        from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection

        opened: list[SqlServerConnection] = []

        def made() -> Iterator[Caller]:
            while True:
                if self._shared:
                    conn = self.connection
                else:
                    conn = SqlServerConnection.connect(self.target)
                    opened.append(conn)
                yield self._caller(conn, slot, serving)

        try:
            yield made()
        finally:
            for conn in opened:
                conn.close()

    def _caller(self, conn: SqlServerConnection, slot: str | None, serving: dict[str, list[str]]) -> Caller:
        def call(body: bytes) -> InvokeResult:
            started = time.perf_counter()
            request_id = uuid.uuid4().hex
            headers = {"x-request-id": request_id}
            try:
                rows = request_rows(body, self.target.inputs)
            except ValueError as exc:
                return json_answer(400, {"error": str(exc)}, started, headers)
            try:
                columns, result = self._score(
                    rows, conn=conn, slot=slot, request_id=request_id, doing="score"
                )
            except DeploymentFailed as exc:  # the script failed: an answer, not a crash
                return json_answer(500, {"error": exc.message}, started, headers)
            versions = sorted({str(r[-1]) for r in result}) if result else []
            slots = [slot] if slot else sorted({s for v in versions for s in serving.get(v, [])})
            if slots:
                headers["azureml-model-deployment"] = ",".join(slots)
            return json_answer(200, {"columns": columns, "data": [list(r) for r in result]}, started, headers)

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
        self.tell("deploy", "checking that external scripts are enabled")
        if not first_value_true(conn.execute(tsql.probe_configuration(), doing="read the configuration")):
            from tdsp_deploy.backends.sqlserver.connection import ENABLE_HINT

            raise DeploymentFailed(
                f"'external scripts enabled' is off on {self.target.server}", hint=ENABLE_HINT
            )
        if not first_value_true(conn.execute(tsql.probe_permission(), doing="check permissions")):
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

    def _probe_rows(self) -> list[list[Any]]:
        smoke = self.manifest.smoke_test
        if smoke is None:
            return []
        try:
            return request_rows(smoke.request.read_bytes(), self.target.inputs)[:1]
        except (OSError, ValueError):
            return []  # the smoke test itself will say what is wrong with the request

    def _score(
        self,
        rows: Sequence[Sequence[Any]],
        *,
        conn: SqlServerConnection | None = None,
        slot: str | None = None,
        request_id: str | None = None,
        doing: str,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        sql, params = scoring_batch(self.target, self.manifest.name, rows, slot=slot, request_id=request_id)
        return (conn or self.connection).query(sql, params, doing=doing)

    def _remove(self, *, rows: bool) -> None:
        conn = self.connection
        name = self.manifest.model_name
        with conn.transaction():
            for procedure in self._procedure_names():
                conn.execute(f"DROP PROCEDURE IF EXISTS {procedure}", doing="drop the procedure")
            if not rows:
                return
            for table in (self._table_name(), self._traffic_table(), self._log_table()):
                if self._exists(table, "U"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE [name] = ?", (name,), doing="delete the model rows"
                    )

    def _delete_slot(self, slot: str) -> None:
        from tdsp_deploy.backends.sqlserver import tsql

        conn = self.connection
        with conn.transaction():
            conn.execute(
                f"DELETE FROM {self._traffic_table()} WHERE [name] = ? AND [slot] = ?",
                (self.manifest.model_name, slot),
                doing="delete the slot",
            )
            conn.execute(
                tsql.refresh_active(self.target), (self.manifest.model_name,), doing="delete the slot"
            )

    def _versions(self) -> list[dict[str, Any]]:
        if not self._table_exists():
            return []
        rows = self.connection.execute(
            "SELECT [version], [sha256], [active], [manifest], [created_at], [created_by] "
            f"FROM {self._table_name()} "
            "WHERE [name] = ? ORDER BY [created_at], [version]",
            (self.manifest.model_name,),
            doing="list the model versions",
        )
        versions = []
        for version, sha256, active, record, created_at, created_by in rows:
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
                    "config_id": document_id(record) if record else None,
                    "created_at": created_at,
                    "created_by": created_by,
                }
            )
        return versions

    def _slots(self) -> list[dict[str, Any]]:
        """The model's rows of the traffic table, by slot name."""
        if not self._exists(self._traffic_table(), "U"):
            return []
        rows = self.connection.execute(
            f"SELECT [slot], [version], [weight], [salt] FROM {self._traffic_table()} "
            "WHERE [name] = ? ORDER BY [slot]",
            (self.manifest.model_name,),
            doing="list the slots",
        )
        return [
            {"slot": str(slot), "version": str(version), "weight": int(weight), "salt": salt}
            for slot, version, weight, salt in rows
        ]

    def _failed_calls(self, slot: str, *, limit: int) -> list[tuple[Any, ...]]:
        if not self.target.request_log or not self._exists(self._log_table(), "U"):
            return []
        return self.connection.execute(
            f"SELECT TOP (?) [t], [request_id], [version], [row_count], [message] FROM {self._log_table()} "
            "WHERE [name] = ? AND [slot] = ? AND [status] >= 500 ORDER BY [id] DESC",
            (limit, self.manifest.model_name, slot),
            doing="read the failed calls",
        )

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

    def _exists(self, name: str, kind: str) -> bool:
        return first_value_true(self.connection.execute(f"SELECT OBJECT_ID(?, N'{kind}')", (name,)))

    def _table_exists(self) -> bool:
        return first_value_true(self.connection.execute("SELECT OBJECT_ID(?, N'U')", (self._table_name(),)))

    def _procedure_exists(self) -> bool:
        return first_value_true(
            self.connection.execute("SELECT OBJECT_ID(?, N'P')", (self._procedure_name(),))
        )

    def _table_name(self) -> str:
        return self._qualified(self.target.model_table)

    def _traffic_table(self) -> str:
        return self._qualified(self.target.traffic_table)

    def _log_table(self) -> str:
        return self._qualified(self.target.request_log_table)

    def _qualified(self, name: str) -> str:
        from tdsp_deploy.backends.sqlserver.target import quote_identifier

        return f"{quote_identifier(self.target.schema_)}.{quote_identifier(name)}"

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
def check_traffic_request(
    slots: Sequence[dict[str, Any]],
    traffic: dict[str, int],
    mirror: dict[str, int] | None,
    target: str,
    procedure: str,
) -> None:
    """Refuse, before any statement, a traffic change that a procedure-routed target cannot
    make: mirroring, an endpoint with no slots, or a slot it does not have (``slots``: the
    traffic table's rows)."""
    if any((mirror or {}).values()):
        raise UsageError(f"{target} cannot mirror traffic", hint="leave out --mirror")
    if not slots:
        raise EndpointNotFound(f"procedure {procedure} has no slots", hint="push first")
    known = {r["slot"] for r in slots}
    unknown = sorted(set(traffic) - known)
    if unknown:
        raise UsageError(f"no slot named {', '.join(unknown)}", hint=f"slots: {', '.join(sorted(known))}")


def request_rows(body: bytes, inputs: Sequence[Column | str]) -> list[list[Any]]:
    """The rows of a request, in the order of the procedure's inputs: a JSON table
    (``{"columns": [...], "data": [[...]]}``) or CSV with a header line naming the columns.
    CSV cells become numbers for numeric inputs (an empty cell is NULL). ValueError says
    what is wrong."""
    names = [c if isinstance(c, str) else c.name for c in inputs]
    text = body.decode("utf-8-sig", errors="strict") if isinstance(body, bytes) else str(body)
    if text.lstrip()[:1] in ("{", "["):
        columns, data = _json_table(text, names)
    else:
        columns, data = _csv_table(text, inputs)
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"the request has no column {', '.join(missing)}")
    order = [columns.index(name) for name in names]
    rows = []
    for number, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"data[{number}] must be a list of {len(columns)} values")
        rows.append([_bindable(row[i], number, names[k]) for k, i in enumerate(order)])
    return rows


#: the integers a driver binds (bigint); a larger one is no SQL value
BIGINT = range(-(2**63), 2**63)


def _bindable(cell: Any, row: int, name: str) -> Any:
    """A cell the driver can bind: text, a number, true/false or null. Lists, objects and
    integers beyond bigint make the driver raise TypeError/ValueError: a 400, not a crash."""
    if isinstance(cell, float) and not math.isfinite(cell):
        raise ValueError(f"data[{row}], column {name}: {cell} is no SQL number")
    if cell is None or isinstance(cell, str | float | bool):
        return cell
    if isinstance(cell, int):
        if cell in BIGINT:
            return cell
        raise ValueError(f"data[{row}], column {name}: {cell} is beyond a bigint")
    raise ValueError(f"data[{row}], column {name}: a {type(cell).__name__} is not a value of a column")


def _json_table(text: str, names: list[str]) -> tuple[list[str], list[Any]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError('the request must be {"columns": [...], "data": [[...], ...]} or CSV')
    return list(doc.get("columns") or names), doc["data"]


_NUMERIC = re.compile(r"^(float|real|decimal|numeric|int|bigint|smallint|tinyint|bit)\b")


def _csv_table(text: str, inputs: Sequence[Column | str]) -> tuple[list[str], list[Any]]:
    import csv
    import io

    lines = list(csv.reader(io.StringIO(text)))
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("the CSV request is empty: it needs a header line naming the columns")
    header = [cell.strip() for cell in lines[0]]
    types = {c.name: c.type for c in inputs if not isinstance(c, str)}
    data = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise ValueError(f"CSV line {number} has {len(line)} cells; the header names {len(header)}")
        data.append(
            [_csv_cell(cell, types.get(name), name, number) for name, cell in zip(header, line, strict=True)]
        )
    return header, data


def _csv_cell(cell: str, sql_type: str | None, name: str, line: int) -> Any:
    cell = cell.strip()
    if sql_type is None or not _NUMERIC.match(sql_type):
        return cell
    if cell == "":
        return None
    try:
        number = float(cell)
    except ValueError:
        raise ValueError(f"CSV line {line}, column {name}: '{cell}' is not a number ({sql_type})") from None
    return int(number) if sql_type.startswith(("int", "bigint", "smallint", "tinyint", "bit")) else number


def scoring_batch(
    target: SqlServerTarget,
    endpoint: str,
    rows: Sequence[Sequence[Any]],
    *,
    slot: str | None = None,
    request_id: str | None = None,
) -> tuple[str, list[Any]]:
    """One batch: the rows into a temporary table through a VALUES query whose values are
    bound ``?`` parameters (never written into the SQL), then EXEC of the procedure with an
    ``@input_query`` that reads that table, ``@slot`` (NULL: the traffic split decides) and
    ``@request_id``. No rows: a typed empty table (the health probe)."""
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
        f"EXEC {procedure} @input_query = N'SELECT * FROM {INPUT_TABLE}', @slot = ?, @request_id = ?;\n"
        f"DROP TABLE {INPUT_TABLE};"
    )
    return sql, [*params, slot, request_id]


def library_versions(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """tsql.probe_python's rows (name, version) as library -> version; a library the server
    lacks (version NULL) is left out."""
    from tdsp_deploy.packaging.libraries import canonical

    return {canonical(str(row[0])): str(row[1]) for row in rows if len(row) >= 2 and row[1] is not None}


def document_id(document: str) -> str:
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


def first_value_true(rows: Sequence[Sequence[Any]]) -> bool:
    return bool(rows) and bool(rows[0]) and rows[0][0] not in (None, 0, False, "0")


def _row_records(
    t: datetime.datetime,
    request_id: str,
    slot: str,
    version: str,
    status: int,
    row_count: int,
    latency_ms: float | None,
    row_keys: str | None,
    pinned: Any,
) -> Iterator[dict[str, Any]]:
    """One request-log row (a call's rows served by one slot) as one record per scored row."""
    when = t.replace(tzinfo=datetime.UTC).timestamp() if isinstance(t, datetime.datetime) else float(t)
    keys = json.loads(row_keys) if row_keys else None
    if keys is None:
        ids = [f"{request_id}:{n}" for n in range(int(row_count))]
    else:  # ab_key values (strings), or the row numbers of the call (a split without ab_key)
        ids = [str(k) if isinstance(k, str) else f"{request_id}:{k}" for k in keys]
    for row_id in ids:
        yield {
            "kind": "live",
            "t": when,
            "id": row_id,
            "deployment": slot,
            "version": version,
            "status": int(status),
            "latency_ms": latency_ms,
            "pinned": bool(pinned),
        }


def _iso(t: Any) -> str:
    if isinstance(t, datetime.datetime):
        return t.replace(microsecond=0).isoformat() + "Z"
    return str(t)


def _create_or_alter(definition: str) -> str:
    """A stored procedure definition, made re-runnable: CREATE becomes CREATE OR ALTER."""
    return re.sub(
        r"^(\s*)CREATE\s+(?!OR\s+ALTER\b)(PROC(?:EDURE)?\b)",
        r"\1CREATE OR ALTER \2",
        definition,
        count=1,
        flags=re.I,
    )
