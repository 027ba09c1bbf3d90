"""The synapse target's sql mode: an ONNX model behind PREDICT in a dedicated SQL pool.

What it adds to the SQL core (backends/sql/): the payload is ONNX (as is, or scikit-learn
converted and checked for parity on the smoke sample, sql_model.py) and PREDICT's rules are
checked before any statement is sent. A dedicated SQL pool runs no DDL inside a user
transaction, so a push creates the tables and a procedure stub outside one, inserts the model
row and points the slot inside ONE transaction, then alters the procedure to the new outputs;
a failure at any step undoes the earlier ones. Slots under one split answer the same outputs
(one WITH clause). The request log is the core's (a row per call and slot; a pool an earlier
version logged per scored row is converted, sql_migrate.py). ``logs`` reads the pool's failed requests (sys.dm_pdw_exec_requests and
sys.dm_pdw_errors: the last 10,000 requests); the lock is a file on this machine (the pool has
no application locks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import Capabilities, SlotStatus, no_progress
from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sql.backend import Answer, Rows, SqlBackend
from tdsp_deploy.backends.sql.document import deployment_document, document_id, with_slot
from tdsp_deploy.backends.sql.requests import check_traffic_request, request_rows
from tdsp_deploy.backends.sql.target import Column
from tdsp_deploy.backends.synapse.sql_calls import INPUT_ARGUMENT as TABLE_ARGUMENT
from tdsp_deploy.backends.synapse.sql_calls import answer, input_rows, served_by
from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, TdspError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from tdsp_deploy.backends.base import Progress
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


class SqlPoolBackend(SqlBackend):
    """A dedicated SQL pool of an Azure Synapse workspace, scoring with PREDICT (ONNX)."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    # the driver is needed only to talk to the pool (connecting says so); render and validate work without
    requires = ("onnx", "onnxruntime")
    #: PREDICT routes rows by weight (traffic table); nothing copies them
    capabilities = Capabilities(weighted_traffic=True)
    CONNECTION = SqlPoolConnection
    WHO = "the synapse target's sql mode"
    GRANT_HINT = "GRANT EXECUTE ON the procedure (and SELECT on the model table) to the callers"
    # the pool refusing a call (PREDICT failing, a permission) is an answer, not a crash
    CALL_REFUSALS = (DeploymentFailed, BackendError)
    SAMPLE_PURPOSE = " for the ONNX checks"
    INPUT_ARGUMENT = TABLE_ARGUMENT

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress, connection: Any = None):
        super().__init__(manifest, progress=progress, connection=connection)
        self.target: SynapseTarget
        self._prepared: dict[str, PreparedModel] = {}

    def _migrate(self, conn: Any) -> None:
        """A pool whose request log an earlier version made (a row per scored row), brought to
        the one shape (sql_migrate.py)."""
        from tdsp_deploy.backends.synapse import sql_migrate

        sql_migrate.migrate(conn, self.tables, self.tell)

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
        return document_id(
            deployment_document(self.target, self.manifest, package.lock, payload=self._source())
        )

    # -- deploying ---------------------------------------------------------------------------
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
        values["manifest"] = with_slot(values["manifest"], slot)
        stored = self._versions()
        slots = self._slots()
        before = _Before(
            slots=slots,
            outputs=_serving_outputs(stored, slots),
            table=self._exists(self.tables.models, "U"),
            traffic_table=self._exists(self.tables.traffic, "U"),
            request_log_table=self._exists(self.tables.requests, "U"),
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

    def _undo(self, slot: str, before: _Before) -> None:
        """Put back the slots and the procedure as ``deploy_slot`` found them and remove the row
        the push added; after a first push, remove the rows, the procedure and the tables the
        push created."""
        self._restore(before, None)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Every slot's weight (slots not named get 0) in one transaction; the pool checks that
        they add up to 100 (or 0) and marks the versions that take traffic active. The slots that
        take traffic must answer the same outputs (the procedure has one WITH clause); when those
        differ from the ones served before, the procedure is altered to them."""
        from tdsp_deploy.backends.synapse import predict_tsql

        slots = self._slots()
        check_traffic_request(slots, traffic, mirror, self.WHO, self._procedure_name())
        versions = self._versions()
        after = [{**r, "weight": int(traffic.get(r["slot"], 0))} for r in slots]
        outputs = _serving_outputs(versions, after)
        before = _serving_outputs(versions, slots)
        self._write_weights(after)
        if outputs and outputs != before:
            self.tell("traffic", f"altering {self._procedure_name()} to the outputs of the serving version")
            self.connection.execute(
                predict_tsql.alter_procedure(self.target, self.manifest.name, [Column(**c) for c in outputs]),
                doing="alter the procedure to the serving version's outputs",
            )

    def _remove_endpoint(self) -> None:
        """The procedure and its rows (and the tables when no other endpoint's rows are left in them)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        self.connection.execute(
            predict_tsql.drop_procedure(self.target, self.manifest.name), doing="drop the procedure"
        )
        self._delete_rows(drop_tables=True)

    def score_locally(self, package: BuiltPackage, body: bytes) -> dict[str, Any]:
        """The answer the procedure would give, computed here: the prepared ONNX payload run by
        onnxruntime with PREDICT's column mapping (no pool involved)."""
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

    # -- what the core asks of this engine --------------------------------------------------
    def _input_rows(self, rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[Any]]:
        return input_rows(self.target, rows)

    def _answer(self, columns: list[str], result: Rows, slot: str | None, serving: dict[str, Any]) -> Answer:
        return answer(columns, result, self.target.outputs), served_by(columns, result)

    def _failure_events(self, slot: str, limit: int) -> list[tuple[Any, str]]:
        """The procedure's failed requests with the pool's error text (every slot's: a failing
        PREDICT fails the whole call)."""
        events = []
        for request_id, submitted, status, command, details in self._failed_requests(limit):
            what = " ".join(str(details or command or "").split())
            events.append((submitted, f"{self._procedure_name()}: request {request_id} {status}: {what}"))
        return events

    def _absent_details(self) -> dict[str, Any]:
        from tdsp_deploy.backends.synapse.predict_tsql import PREDICT_NOTICE

        return {"notice": PREDICT_NOTICE}

    def _endpoint_details(self) -> dict[str, Any]:
        return {"mode": "sql", **self._absent_details(), **super()._endpoint_details()}

    def _slot_details(self, version: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **super()._slot_details(version),
            "payload": (version or {"document": {}})["document"].get("payload"),
        }

    # -- internals -----------------------------------------------------------------------
    def _run(self, statement: Any, values: dict[str, Any], model: str, size: int, slot: str) -> None:
        self.tell(
            "deploy",
            STEP_MESSAGES.get(statement.name, statement.name).format(
                table=self.tables.models, procedure=self._procedure_name(), model=model, size=size, slot=slot
            ),
        )
        self.connection.execute(
            statement.sql, [values[p] for p in statement.parameters], doing=statement.name.replace("_", " ")
        )

    def _restore(self, before: _Before, failure: TdspError | None) -> None:
        """Put back what ``before`` describes. A failure of the undo itself is reported on
        ``failure`` (when given) rather than hiding it; during a discard it is raised."""
        from tdsp_deploy.backends.synapse import predict_tsql

        conn = self.connection
        endpoint = self._key()
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
                    (before.traffic_table, self.tables.traffic),
                    (before.request_log_table, self.tables.requests),
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
            slots = self._exists(self.tables.traffic, "U")
            with conn.transaction():
                self._restore_slots(before.slots, clear=slots)
                if before.inserted is not None and before.inserted not in {
                    r["version"] for r in before.slots
                }:
                    conn.execute(
                        sql_rows.delete_version(self.tables),
                        (endpoint, before.inserted),
                        doing="remove the new version's row",
                    )
                if slots:
                    conn.execute(sql_rows.refresh_active(self.tables), (endpoint,), doing="restore the slots")
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
        endpoint = self._key()
        tables = self.tables
        deletes = [
            (table, doing)
            for table, doing in (
                (tables.traffic, "delete the slots"),
                (tables.requests, "delete the request log rows"),
                (tables.models, "delete the model rows"),
            )
            if self._exists(table, "U")
        ]
        if deletes:
            with conn.transaction():
                for table, doing in deletes:
                    conn.execute(sql_rows.delete_rows(tables, table), (endpoint,), doing=doing)
        if drop_tables:
            for table in (tables.traffic, tables.requests):
                conn.execute(
                    predict_tsql.drop_table_if_empty(self.target, table), doing="drop an empty table"
                )
            conn.execute(predict_tsql.drop_table_if_empty(self.target), doing="drop the empty model table")

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

    def _source(self) -> str:
        return "sklearn" if self.manifest.model.flavor == "sklearn" else "onnx"


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
