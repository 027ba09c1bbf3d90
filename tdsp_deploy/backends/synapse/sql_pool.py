"""The synapse target's sql mode: an ONNX model behind PREDICT in a dedicated SQL pool.

Everything goes through ``SqlPoolConnection`` (sql_connection.py), the one door to the pool;
tests hand in a fake DB-API connection. The T-SQL comes from predict_tsql.py, the payload from
sql_model.py. This module imports no driver, and skl2onnx/onnxruntime only when a push or a
render prepares the model.

How the backend contract maps onto the pool (as the SQL Server target does):

- the endpoint is the scoring procedure; its model versions are rows of the model table. A
  deployment slot (blue, green, ...) is a row of the traffic table: the version it serves, its
  weight and the salt of the key hash. The procedure routes each call: pinned with ``@slot`` to
  that slot, else each row to a slot with a weight by a hash of its key (``target.ab_key``, else
  its input values), with one PREDICT per slot; every answer names its version and slot;
- a push first prepares the payload (ONNX as is, or scikit-learn converted and checked for
  parity on the smoke sample) and checks PREDICT's rules -- before any statement is sent. Then
  the model and traffic tables and a procedure stub are created if missing (DDL: the pool runs
  none inside a user transaction), ONE transaction inserts the model row and points the slot at
  it with no traffic, and the procedure is altered to the new outputs. A failure at any step
  undoes the earlier ones: the slots and the procedure as they were and the new row gone, or,
  after a first push, the rows, the procedure and the tables this push created gone;
- ``set_traffic`` writes every slot's weight in one transaction; the pool refuses weights that
  do not add up to 100. Slots under one split answer the same outputs (one WITH clause);
- ``logs`` reads what the pool keeps: the pushes in the model table and the procedure's failed
  requests in sys.dm_pdw_exec_requests / sys.dm_pdw_errors (the last 10,000 requests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
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
    SlotStatus,
    json_answer,
    no_progress,
    refuse_unless_deletable,
)
from tdsp_deploy.backends.sqlserver import check_traffic_request, document_id, first_value_true
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, EndpointNotFound, TdspError, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection
    from tdsp_deploy.backends.synapse.sql_model import PreparedModel
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage

STEP_MESSAGES = {
    "create_model_table": "model table {table} (created if missing)",
    "create_traffic_table": "traffic table (created if missing)",
    "create_request_log_table": "request log table (created if missing)",
    "create_procedure_stub": "procedure {procedure} (a stub if missing)",
    "insert_model": "storing model {model} ({size} bytes of ONNX) unless that version is there",
    "assign_slot": "slot {slot} serves {model} (no traffic yet)",
    "refresh_active": "marking the versions that take traffic",
    "alter_procedure": "altering {procedure} to PREDICT with the model's outputs",
}
#: the pool's request history: sys.dm_pdw_exec_requests keeps the last 10,000 requests
FAILED_REQUESTS = 200


@dataclasses.dataclass
class _Before:
    """What deploy_slot found, so that a failure or a discard can put it back."""

    slots: list[dict[str, Any]]  # the endpoint's traffic rows
    outputs: list[dict[str, Any]] | None  # the procedure's outputs (those of the serving versions)
    table: bool  # the model table existed
    traffic_table: bool  # the traffic table existed
    request_log_table: bool  # the request log table existed
    procedure: bool  # the procedure existed
    versions: bool  # the endpoint had model versions stored
    inserted: str | None = None  # the version this push adds (None: it was stored already)


class SqlPoolBackend(Backend):
    """A dedicated SQL pool of an Azure Synapse workspace, scoring with PREDICT (ONNX)."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    # the driver is needed only to talk to the pool (connecting says so); render and validate work without
    requires = ("onnx", "onnxruntime")
    #: the procedure routes rows by weight (traffic table); nothing copies them
    capabilities = Capabilities(weighted_traffic=True)

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress, connection: Any = None):
        super().__init__(manifest, progress=progress)
        self.target: SynapseTarget
        self._connection: SqlPoolConnection | None = None
        self._shared = connection is not None  # handed in: never closed, shared by callers
        if connection is not None:
            from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection

            self._connection = (
                connection if isinstance(connection, SqlPoolConnection) else SqlPoolConnection(connection)
            )
        self._replaced: dict[str, _Before] = {}
        self._prepared: dict[str, PreparedModel] = {}

    @property
    def connection(self) -> SqlPoolConnection:
        """The connection, opened on first use (never when a test handed one in)."""
        if self._connection is None:
            from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection

            self._connection = SqlPoolConnection.connect(self.target)  # type: ignore[arg-type]
        return self._connection

    # -- reading -------------------------------------------------------------------------
    def status(self) -> EndpointStatus:
        """The procedure, the model versions, and the slots of the traffic table."""
        from tdsp_deploy.backends.synapse.predict_tsql import PREDICT_NOTICE

        procedure = self._procedure_exists()
        versions = self._versions()
        name = self.manifest.name
        if not procedure and not versions:
            return EndpointStatus(name=name, kind=self.kind, exists=False, details={"notice": PREDICT_NOTICE})
        by_version = {v["version"]: v for v in versions}
        slots = []
        for route in self._slots():
            version = by_version.get(route["version"])
            document = version["document"] if version else {}
            slots.append(
                SlotStatus(
                    name=route["slot"],
                    state="healthy" if procedure and version is not None else "stopped",
                    traffic=route["weight"] if procedure else 0,
                    model_version=route["version"],
                    package_id=document.get("package_id"),
                    config_id=version["config_id"] if version else None,
                    details={
                        "sha256": version["sha256"] if version else None,
                        "payload": document.get("payload"),
                    },
                )
            )
        return EndpointStatus(
            name=name,
            kind=self.kind,
            exists=True,
            scoring_uri=self._scoring_uri(),
            slots=slots,
            details={
                "mode": "sql",
                "notice": PREDICT_NOTICE,
                "procedure": self._procedure_name(),
                "model_table": self._table_name(),
                "versions": [
                    {"version": v["version"], "sha256": v["sha256"], "active": v["active"]} for v in versions
                ],
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """What the pool keeps about the slot, oldest first: each model version pushed as it (when,
        by whom, its sha256), the procedure's failed requests with the pool's error text (from
        sys.dm_pdw_exec_requests and sys.dm_pdw_errors: the pool's last 10,000 requests, every
        slot's, since a failing PREDICT fails the whole call), and what the slot serves now."""
        routes = {r["slot"]: r for r in self._slots()}
        if slot not in routes:
            raise UsageError(
                f"endpoint '{self.manifest.name}' has no slot '{slot}'",
                hint=f"slots: {', '.join(sorted(routes)) or 'none'}",
            )
        events: list[tuple[Any, str]] = []
        model = self.manifest.model_name
        for version in self._versions():
            if version["slot"] == slot:
                events.append(
                    (
                        version["created_at"],
                        f"{slot}: pushed {model}:{version['version']} (sha256 {str(version['sha256'])[:12]}, "
                        f"by {version['created_by']})",
                    )
                )
        for request_id, submitted, status, command, details in self._failed_requests(tail or FAILED_REQUESTS):
            what = " ".join(str(details or command or "").split())
            events.append((submitted, f"{self._procedure_name()}: request {request_id} {status}: {what}"))
        events.sort(key=lambda event: _sortable(event[0]))
        lines = [f"{_iso(t)} {text}" for t, text in events]
        route = routes[slot]
        lines.append(f"now {slot}: {model}:{route['version']}, {route['weight']}% of traffic")
        return "\n".join(lines[-tail:] if tail else lines)

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """A lock file per pool and endpoint on this machine: a dedicated SQL pool has no
        application locks (sp_getapplock is SQL Server's) and enforces no unique constraint, so
        two machines are not kept apart; the traffic change is one transaction either way."""
        from tdsp_deploy import paths
        from tdsp_deploy.locks import FileLock

        home = paths.state_home() / "synapse-sql" / str(self.target.server) / str(self.target.database)
        path = home / "endpoints" / self.manifest.name / ".lock"
        return FileLock(
            path, self.manifest.name, timeout=timeout, on_wait=lambda message: self.tell("lock", message)
        )

    def credentials(self) -> dict[str, str]:
        """None: callers authenticate to the pool itself (target.auth)."""
        raise UsageError(
            "the synapse target's sql mode has no endpoint keys: callers use database authentication",
            hint="GRANT EXECUTE ON the procedure (and SELECT on the model table) to the callers",
        )

    def preflight(self) -> list[str]:
        """Refuse, before packaging, columns PREDICT cannot take and a flavor it cannot run."""
        from tdsp_deploy.backends.synapse.sql_predict_rules import check_columns

        check_columns(self.target.inputs, self.target.outputs)
        if self.manifest.model.flavor not in ("sklearn", "onnx"):
            raise UsageError(
                f"PREDICT runs ONNX models; model.flavor is {self.manifest.model.flavor or 'not set'}",
                hint="set model.flavor: onnx, or sklearn to have the model converted to ONNX at package time",
            )
        from tdsp_deploy.backends.synapse.predict_tsql import PREDICT_NOTICE

        return [PREDICT_NOTICE]

    def config_id(self, package: BuiltPackage) -> str:
        """The hash of the deployment document stored with the model row (see status)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        document = predict_tsql.deployment_document(
            self.target, self.manifest, package.lock, source=self._source()
        )
        return document_id(document)

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Prepare and check the ONNX payload (nothing is sent before), then: the tables and a
        stub procedure if missing, one transaction for the row and the slot (no traffic when
        new), the procedure altered. Any failure undoes what was done before it."""
        from tdsp_deploy.backends.synapse import predict_tsql

        prepared = self.prepare(package)
        values = predict_tsql.parameter_values(
            self.target, self.manifest, package.lock, prepared.payload, source=prepared.source, slot=slot
        )
        # the deployment document, plus the slot it was pushed as (read back by status and logs)
        values["manifest"] = json.dumps(
            {**json.loads(values["manifest"]), "slot": slot}, sort_keys=True, separators=(",", ":")
        )
        stored = self._versions()
        slots = self._slots()
        before = _Before(
            slots=slots,
            outputs=_serving_outputs(stored, slots),
            table=self._table_exists(),
            traffic_table=self._traffic_table_exists(),
            request_log_table=self._log_table_exists(),
            procedure=self._procedure_exists(),
            versions=bool(stored),
            inserted=None if any(v["version"] == values["version"] for v in stored) else values["version"],
        )
        statements = predict_tsql.deployment_statements(self.target, self.manifest.name, self.target.outputs)
        conn = self.connection
        model = f"{self.manifest.model_name}:{package.lock.model_version}"
        try:
            with contextlib.ExitStack() as stack:
                for statement in statements:
                    if statement.name == predict_tsql.TRANSACTION[0]:
                        stack.enter_context(conn.transaction())
                    self._run(statement, values, model, len(prepared.payload), slot)
                    if statement.name == predict_tsql.TRANSACTION[-1]:
                        stack.close()  # commit
        except TdspError as failure:
            self._restore(before, failure)
            raise
        self._replaced[slot] = before
        return SlotStatus(
            name=slot,
            state="starting",
            model_version=package.lock.model_version,
            package_id=package.package_id,
            config_id=self.config_id(package),
            details={"payload": prepared.source, "sha256": values["sha256"]},
        )

    def wait_healthy(self, slot: str) -> SlotStatus:
        """EXEC the procedure pinned to ``slot`` on a probe (the smoke request's first row, else
        no rows): PREDICT loads the slot's model and answers, or the pool's error says why not."""
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
        """Put back the slots and the procedure as ``deploy_slot`` found them and remove the row
        the push added; after a first push, remove the rows, the procedure and the tables the
        push created. Without a note from ``deploy_slot`` (another process), a slot without
        traffic is removed."""
        before = self._replaced.pop(slot, None)
        if before is None:
            route = next((r for r in self._slots() if r["slot"] == slot), None)
            if route is not None and route["weight"] == 0:
                self.tell("rollback", f"removing slot {slot}")
                self._delete_slot(slot)
            return
        self._restore(before, None)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Every slot's weight (slots not named get 0) in one transaction; the pool checks that
        they add up to 100 (or 0) and marks the versions that take traffic active. The slots that
        take traffic must answer the same outputs (the procedure has one WITH clause); when those
        differ from the ones served before, the procedure is altered to them."""
        from tdsp_deploy.backends.sqlserver.target import Column
        from tdsp_deploy.backends.synapse import predict_tsql

        slots = self._slots()
        check_traffic_request(slots, traffic, mirror, "the synapse target's sql mode", self._procedure_name())
        versions = self._versions()
        after = [{**r, "weight": int(traffic.get(r["slot"], 0))} for r in slots]
        outputs = _serving_outputs(versions, after)
        before = _serving_outputs(versions, slots)
        endpoint = self._endpoint_key()
        conn = self.connection
        with conn.transaction():
            for route in after:
                conn.execute(
                    predict_tsql.set_weight(self.target),
                    (endpoint, route["slot"], route["weight"]),
                    doing="set the traffic",
                )
            conn.execute(predict_tsql.refresh_active(self.target), (endpoint,), doing="set the traffic")
        if outputs and outputs != before:
            self.tell("traffic", f"altering {self._procedure_name()} to the outputs of the serving version")
            conn.execute(
                predict_tsql.alter_procedure(self.target, self.manifest.name, [Column(**c) for c in outputs]),
                doing="alter the procedure to the serving version's outputs",
            )

    def set_experiment(self, experiment_id: str) -> None:
        """A new experiment salts the key hash with its id: keys are shuffled afresh."""
        from tdsp_deploy.backends.synapse import predict_tsql

        self.connection.execute(
            predict_tsql.set_salt(self.target),
            (self._endpoint_key(), experiment_id),
            doing="start the experiment",
        )

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """The request log from ``since``: one record per scored row, as the A/B analysis reads
        them (``id``: the row's ab_key value, else ``<request id>:<slot>:<n>``, n counting the
        call's rows of that slot)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        if not self.target.request_log:
            raise UsageError(
                "target.request_log is off: the procedure logs no rows to analyze",
                hint="set target.request_log: true and push again",
            )
        if not self._log_table_exists():
            return
        started = datetime.datetime.fromtimestamp(since, datetime.UTC).replace(tzinfo=None)
        rows = self.connection.execute(
            predict_tsql.list_requests(self.target),
            (self._endpoint_key(), started),
            doing="read the request log",
        )
        counted: dict[tuple[str, str], int] = {}
        for t, request_id, slot, version, status, row_key, latency_ms, pinned in rows:
            number = counted.get((request_id, slot), 0)
            counted[(request_id, slot)] = number + 1
            yield {
                "kind": "live",
                "t": _timestamp(t),
                "id": str(row_key) if row_key is not None else f"{request_id}:{slot}:{number}",
                "deployment": str(slot),
                "version": str(version),
                "status": int(status),
                "latency_ms": latency_ms,
                "pinned": bool(pinned),
            }

    def delete(self, slot: str | None = None) -> None:
        """One slot (its traffic row; refused while it takes traffic), or the whole endpoint: the
        procedure and its rows (and the tables when no other endpoint's rows are left in them)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist")
        if slot is not None:
            names = (s.name for s in status.slots)
            refuse_unless_deletable(self.manifest.name, slot, status.slot(slot), names, noun="slot")
            self._delete_slot(slot)
            return
        conn = self.connection
        conn.execute(predict_tsql.drop_procedure(self.target, self.manifest.name), doing="drop the procedure")
        self._delete_rows(drop_tables=True)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that put the request's rows in a #temp table (bound ``?`` values) and EXEC the
        procedure on it, pinned to ``slot`` when given; the answer is ``{"columns": [outputs...,
        "model_version"], "data"}`` in the request's row order, and the slots that served it
        are named as the HTTP targets name them (``azureml-model-deployment``)."""
        if slot is not None and slot not in {r["slot"] for r in self._slots()}:
            raise UsageError(f"endpoint '{self.manifest.name}' has no slot '{slot}'")
        return self._callers(slot)

    @contextlib.contextmanager
    def _callers(self, slot: str | None) -> Iterator[Iterator[Caller]]:
        from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection

        opened: list[SqlPoolConnection] = []

        def made() -> Iterator[Caller]:
            while True:
                if self._shared:
                    conn = self.connection
                else:
                    conn = SqlPoolConnection.connect(self.target)  # type: ignore[arg-type]
                    opened.append(conn)
                yield self._caller(conn, slot)

        try:
            yield made()
        finally:
            for conn in opened:
                conn.close()

    def _caller(self, conn: SqlPoolConnection, slot: str | None) -> Caller:
        from tdsp_deploy.backends.sqlserver import request_rows

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
            except (
                DeploymentFailed,
                BackendError,
            ) as exc:  # the pool refused the call: an answer, not a crash
                return json_answer(500, {"error": exc.message}, started, headers)
            document = answer(columns, result, self.target.outputs)
            served = served_by(columns, result)
            if served:
                headers["azureml-model-deployment"] = ",".join(served)
            return json_answer(200, document, started, headers)

        return call

    def score_locally(self, package: BuiltPackage, body: bytes) -> dict[str, Any]:
        """The answer the procedure would give, computed here: the prepared ONNX payload run by
        onnxruntime with PREDICT's column mapping (no pool involved)."""
        from tdsp_deploy.backends.sqlserver import request_rows
        from tdsp_deploy.backends.synapse.sql_predict_local import LocalPredict

        prepared = self.prepare(package)
        try:
            rows = request_rows(body, self.target.inputs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        scored = LocalPredict(prepared.payload, self.target.inputs, self.target.outputs).score(rows)
        version = package.lock.model_version
        return {
            "columns": [*(c.name for c in self.target.outputs), "model_version"],
            "data": [[*row, version] for row in scored],
        }

    # -- reviewing -----------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """The T-SQL a push would run in order, the ONNX payload and the parameters."""
        from tdsp_deploy.backends.synapse import predict_tsql

        self.tell("render", f"note: {predict_tsql.PREDICT_NOTICE}")
        prepared = self.prepare(package)
        return predict_tsql.render_tsql(
            self.target, self.manifest, package.lock, prepared.payload, out_dir, source=prepared.source
        )

    # -- the payload ---------------------------------------------------------------------
    def prepare(self, package: BuiltPackage) -> PreparedModel:
        """The ONNX payload of ``package``, converted when needed and checked (rules, parity)."""
        from tdsp_deploy.backends.synapse.sql_model import prepare_model

        cached = self._prepared.get(package.package_id)
        if cached is not None:
            return cached
        if self.manifest.model.flavor == "sklearn":
            self.tell("package", "converting the scikit-learn model to ONNX (one input per column)")
        smoke = self.manifest.smoke_test
        prepared = prepare_model(
            self.unpacked(package, "synapse-sql") / package.lock.model.path,
            self.manifest.model.flavor,
            self.target.inputs,
            self.target.outputs,
            sample_rows=self._sample_rows(),
            tolerance=smoke.tolerance if smoke is not None else 1e-6,
        )
        if prepared.parity is not None:
            self.tell(
                "package",
                f"ONNX parity: {prepared.parity.rows} sample row(s) agree "
                f"(largest difference {prepared.parity.largest_difference:.3g})",
            )
        self._prepared[package.package_id] = prepared
        return prepared

    # -- internals -----------------------------------------------------------------------
    def _run(self, statement: Any, values: dict[str, Any], model: str, size: int, slot: str) -> None:
        self.tell(
            "deploy",
            STEP_MESSAGES.get(statement.name, statement.name).format(
                table=self._table_name(), procedure=self._procedure_name(), model=model, size=size, slot=slot
            ),
        )
        self.connection.execute(
            statement.sql, [values[p] for p in statement.parameters], doing=statement.name.replace("_", " ")
        )

    def _restore(self, before: _Before, failure: TdspError | None) -> None:
        """Put back what ``before`` describes. A failure of the undo itself is reported on
        ``failure`` (when given) rather than hiding it; during a discard it is raised."""
        from tdsp_deploy.backends.sqlserver.target import Column
        from tdsp_deploy.backends.synapse import predict_tsql

        conn = self.connection
        endpoint = self._endpoint_key()
        try:
            if not before.slots and not before.versions:  # a first push: nothing of it stays
                self.tell("rollback", f"removing {self._procedure_name()} and this endpoint's rows")
                if not before.procedure:
                    conn.execute(
                        predict_tsql.drop_procedure(self.target, self.manifest.name),
                        doing="drop the procedure",
                    )
                self._delete_rows(drop_tables=False)
                for existed, table in (
                    (before.traffic_table, self._traffic_name()),
                    (before.request_log_table, self._log_name()),
                ):
                    if not existed:
                        conn.execute(
                            predict_tsql.drop_table_if_empty(self.target, table),
                            doing="drop a table it created",
                        )
                if not before.table:
                    conn.execute(predict_tsql.drop_table_if_empty(self.target), doing="drop the model table")
                return
            self.tell("rollback", "putting back the slots and the procedure as they were")
            slots = self._traffic_table_exists()
            with conn.transaction():
                if slots:
                    conn.execute(
                        predict_tsql.delete_slots(self.target), (endpoint,), doing="restore the slots"
                    )
                for route in before.slots:
                    conn.execute(
                        predict_tsql.restore_slot(self.target),
                        [endpoint, *(route[k] for k in ("slot", "version", "weight", "salt", "updated_at"))],
                        doing="restore the slots",
                    )
                if before.inserted is not None and before.inserted not in {
                    r["version"] for r in before.slots
                }:
                    conn.execute(
                        predict_tsql.delete_version(self.target),
                        (endpoint, before.inserted),
                        doing="remove the new version's row",
                    )
                if slots:
                    conn.execute(
                        predict_tsql.refresh_active(self.target), (endpoint,), doing="restore the slots"
                    )
            if before.outputs:
                conn.execute(
                    predict_tsql.alter_procedure(
                        self.target, self.manifest.name, [Column(**c) for c in before.outputs]
                    ),
                    doing="restore the previous procedure",
                )
        except TdspError as undo:
            if failure is None:
                raise
            failure.details["undo_failed"] = undo.message

    def _delete_rows(self, *, drop_tables: bool) -> None:
        """This endpoint's rows of the model, traffic and request log tables, in one transaction;
        with ``drop_tables``, each table that no endpoint has rows in any more is dropped too."""
        from tdsp_deploy.backends.synapse import predict_tsql

        conn = self.connection
        endpoint = self._endpoint_key()
        deletes = [
            (statement, doing)
            for exists, statement, doing in (
                (self._traffic_table_exists, predict_tsql.delete_slots, "delete the slots"),
                (self._log_table_exists, predict_tsql.delete_requests, "delete the request log rows"),
                (self._table_exists, predict_tsql.delete_rows, "delete the model rows"),
            )
            if exists()
        ]
        if deletes:
            with conn.transaction():
                for statement, doing in deletes:
                    conn.execute(statement(self.target), (endpoint,), doing=doing)
        if drop_tables:
            for table in (self._traffic_name(), self._log_name()):
                conn.execute(
                    predict_tsql.drop_table_if_empty(self.target, table), doing="drop an empty table"
                )
            conn.execute(predict_tsql.drop_table_if_empty(self.target), doing="drop the empty model table")

    def _delete_slot(self, slot: str) -> None:
        from tdsp_deploy.backends.synapse import predict_tsql

        conn = self.connection
        with conn.transaction():
            conn.execute(
                predict_tsql.delete_slot(self.target), (self._endpoint_key(), slot), doing="delete the slot"
            )
            conn.execute(
                predict_tsql.refresh_active(self.target), (self._endpoint_key(),), doing="delete the slot"
            )

    def _sample_rows(self) -> list[list[Any]] | None:
        from tdsp_deploy.backends.sqlserver import request_rows

        smoke = self.manifest.smoke_test
        if smoke is None:
            return None
        try:
            return request_rows(smoke.request.read_bytes(), self.target.inputs)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"smoke_test.request cannot give the sample rows for the ONNX checks: {exc}",
                hint='write it as {"columns": [...], "data": [[...], ...]} with the target.inputs columns',
            ) from None

    def _probe_rows(self) -> list[list[Any]]:
        try:
            return (self._sample_rows() or [])[:1]
        except UsageError:
            return []  # the smoke test itself will say what is wrong with the request

    def _score(
        self,
        rows: Sequence[Sequence[Any]],
        *,
        conn: SqlPoolConnection | None = None,
        slot: str | None = None,
        request_id: str | None = None,
        doing: str,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        from tdsp_deploy.backends.synapse import predict_tsql

        sql, params = predict_tsql.scoring_batch(
            self.target, self.manifest.name, rows, slot=slot, request_id=request_id
        )
        return (conn or self.connection).query(sql, params, doing=doing)

    def _versions(self) -> list[dict[str, Any]]:
        from tdsp_deploy.backends.synapse import predict_tsql

        if not self._table_exists():
            return []
        rows = self.connection.execute(
            predict_tsql.list_versions(self.target), (self._endpoint_key(),), doing="list the model versions"
        )
        versions = []
        for version, sha256, active, record, created_at, created_by in rows:
            try:
                document = json.loads(record) if record else {}
            except ValueError:
                document = {}
            document = document if isinstance(document, dict) else {}
            versions.append(
                {
                    "version": str(version),
                    "sha256": sha256,
                    "active": bool(active),
                    "slot": document.get("slot"),
                    "document": document,
                    "config_id": document_id(record) if record else None,
                    "created_at": created_at,
                    "created_by": created_by,
                }
            )
        return versions

    def _slots(self) -> list[dict[str, Any]]:
        """The endpoint's rows of the traffic table, by slot name."""
        from tdsp_deploy.backends.synapse import predict_tsql

        if not self._traffic_table_exists():
            return []
        rows = self.connection.execute(
            predict_tsql.list_slots(self.target), (self._endpoint_key(),), doing="list the slots"
        )
        return [
            {
                "slot": str(slot),
                "version": str(version),
                "weight": int(weight),
                "salt": salt,
                "updated_at": at,
            }
            for slot, version, weight, salt, at in rows
        ]

    def _failed_requests(self, limit: int) -> list[tuple[Any, ...]]:
        """(request id, submit time, status, command, error details) of the procedure's failed
        requests that the pool still lists, newest first."""
        from tdsp_deploy.backends.synapse import predict_tsql

        try:
            return self.connection.execute(
                predict_tsql.failed_requests(limit),
                predict_tsql.failed_requests_parameters(self.target, self.manifest.name),
                doing="read the procedure's failed requests",
            )
        except BackendError as exc:
            if "permission" not in exc.message.lower():
                raise
            raise BackendError(
                exc.message,
                hint="reading the pool's request history needs: GRANT VIEW DATABASE STATE TO [you]",
            ) from None

    def _log_table_exists(self) -> bool:
        return first_value_true(self.connection.execute("SELECT OBJECT_ID(?, N'U');", (self._log_name(),)))

    def _log_name(self) -> str:
        from tdsp_deploy.backends.synapse import predict_tsql

        return predict_tsql.qualified_request_log(self.target)

    def _traffic_table_exists(self) -> bool:
        return first_value_true(
            self.connection.execute("SELECT OBJECT_ID(?, N'U');", (self._traffic_name(),))
        )

    def _traffic_name(self) -> str:
        from tdsp_deploy.backends.synapse import predict_tsql

        return predict_tsql.qualified_traffic(self.target)

    def _table_exists(self) -> bool:
        return first_value_true(self.connection.execute("SELECT OBJECT_ID(?, N'U');", (self._table_name(),)))

    def _procedure_exists(self) -> bool:
        return first_value_true(
            self.connection.execute("SELECT OBJECT_ID(?, N'P');", (self._procedure_name(),))
        )

    def _endpoint_key(self) -> str:
        from tdsp_deploy.backends.synapse import predict_tsql

        return predict_tsql.procedure(self.target, self.manifest.name)

    def _table_name(self) -> str:
        from tdsp_deploy.backends.synapse import predict_tsql

        return predict_tsql.qualified_table(self.target)

    def _procedure_name(self) -> str:
        from tdsp_deploy.backends.synapse import predict_tsql

        return predict_tsql.qualified_procedure(self.target, self.manifest.name)

    def _scoring_uri(self) -> str:
        return f"mssql://{self.target.server}/{self.target.database}/{self._procedure_name()}"

    def _source(self) -> str:
        return "sklearn" if self.manifest.model.flavor == "sklearn" else "onnx"


def answer(columns: Sequence[str], rows: Sequence[Sequence[Any]], outputs: Sequence[Any]) -> dict[str, Any]:
    """The procedure's result (input columns, outputs, model_version, variant) as the JSON
    answer: the outputs and model_version only, as the SQL Server target answers, in the
    request's row order."""
    from tdsp_deploy.backends.synapse.predict_tsql import ROW_COLUMN

    position = {name.lower(): i for i, name in enumerate(columns)}
    wanted = [*(c.name for c in outputs), "model_version"]
    missing = [name for name in wanted if name.lower() not in position]
    if missing:
        raise BackendError(
            f"the procedure's result has no column {', '.join(missing)} (columns: {list(columns)})"
        )
    picks = [position[name.lower()] for name in wanted]
    order = position.get(ROW_COLUMN)
    if order is not None:  # the pool answers in no particular order: the request's order again
        rows = sorted(rows, key=lambda row: row[order])
    return {"columns": wanted, "data": [[row[i] for i in picks] for row in rows]}


def served_by(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The slots (``variant`` column) that answered, by name."""
    from tdsp_deploy.backends.synapse.predict_tsql import VARIANT_COLUMN

    position = {name.lower(): i for i, name in enumerate(columns)}.get(VARIANT_COLUMN)
    return [] if position is None else sorted({str(row[position]) for row in rows})


def _serving_outputs(
    versions: list[dict[str, Any]], slots: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The outputs the versions taking traffic answer (their deployment documents'); UsageError
    when they differ, since one procedure has one WITH clause."""
    by_version = {v["version"]: v["document"].get("outputs") for v in versions}
    found = {
        json.dumps(by_version.get(r["version"]), sort_keys=True): r["slot"] for r in slots if r["weight"] > 0
    }
    if len(found) > 1:
        raise UsageError(
            f"slots {', '.join(sorted(found.values()))} answer different outputs; one procedure cannot "
            "split calls between them",
            hint="give all the traffic to one slot, or push the versions with the same target.outputs",
        )
    return json.loads(next(iter(found))) if found else None


def _sortable(t: Any) -> Any:
    """A timestamp that sorts beside others (the pool's datetime, or the fake's counter)."""
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=None).timestamp()
    return float(t) if isinstance(t, int | float) else 0.0


def _timestamp(t: Any) -> float:
    """Unix time of the pool's datetime2 (UTC, without a zone)."""
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=datetime.UTC).timestamp()
    return float(t)


def _iso(t: Any) -> str:
    if isinstance(t, datetime.datetime):
        return t.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return str(t)
