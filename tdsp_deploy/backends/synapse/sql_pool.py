"""The synapse target's sql mode: an ONNX model behind PREDICT in a dedicated SQL pool.

Everything goes through ``SqlPoolConnection`` (sql_connection.py), the one door to the pool;
tests hand in a fake DB-API connection. The T-SQL comes from predict_tsql.py, the payload from
sql_model.py. This module imports no driver, and skl2onnx/onnxruntime only when a push or a
render prepares the model.

How the backend contract maps onto the pool (as the SQL Server target does):

- the endpoint is the scoring procedure; its model versions are rows of the model table, one
  of them active, taking every call (no weighted split between versions yet);
- a push first prepares the payload (ONNX as is, or scikit-learn converted and checked for
  parity on the smoke sample) and checks PREDICT's rules -- before any statement is sent. Then
  the model table and a procedure stub are created if missing (DDL: the pool runs none inside
  a user transaction), ONE transaction inserts the model row and activates it, and the
  procedure is altered to the new outputs. A failure at any step undoes the earlier ones: the
  previous version is active again with its procedure and the new row is gone, or, after a
  first push, the rows, the procedure and a table this push created are gone;
- discard (rollback after a failed smoke test) restores the same way.
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
from tdsp_deploy.backends.sqlserver import document_id, first_value_true, json_answer
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
    "create_procedure_stub": "procedure {procedure} (a stub if missing)",
    "insert_model": "storing model {model} ({size} bytes of ONNX) unless that version is there",
    "activate_version": "activating {model}",
    "alter_procedure": "altering {procedure} to PREDICT with the model's outputs",
}


class _Before:
    """What deploy_slot found, so that a failure or a discard can put it back."""

    def __init__(
        self, version: dict[str, Any] | None, table: bool, procedure: bool, inserted: str | None = None
    ):
        self.version = version  # the active version's row (with its document), or None
        self.table = table  # the model table existed
        self.procedure = procedure  # the procedure existed
        self.inserted = inserted  # the version this push adds (None: it was stored already)


class SqlPoolBackend(Backend):
    """A dedicated SQL pool of an Azure Synapse workspace, scoring with PREDICT (ONNX)."""

    kind = "synapse"
    target_model = SynapseTarget
    extra = "synapse"
    # the driver is needed only to talk to the pool (connecting says so); render and validate work without
    requires = ("onnx", "onnxruntime")
    supports_weighted_traffic = False
    supports_mirror = False

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
                    package_id=active["document"].get("package_id"),
                    config_id=active["config_id"],
                    details={"sha256": active["sha256"], "payload": active["document"].get("payload")},
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
                "procedure": self._procedure_name(),
                "model_table": self._table_name(),
                "versions": [
                    {"version": v["version"], "sha256": v["sha256"], "active": v["active"]} for v in versions
                ],
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """Not available: PREDICT keeps no per-procedure log."""
        raise UsageError(
            "the synapse target's sql mode has no slot log",
            hint="look up the procedure's requests in sys.dm_pdw_exec_requests and sys.dm_pdw_errors",
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
        return []

    def config_id(self, package: BuiltPackage) -> str:
        """The hash of the deployment document stored with the model row (see status)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        document = predict_tsql.deployment_document(
            self.target, self.manifest, package.lock, source=self._source()
        )
        return document_id(document)

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Prepare and check the ONNX payload (nothing is sent before), then: table and stub
        procedure if missing, one transaction for the row and its activation, the procedure
        altered. Any failure undoes what was done before it."""
        from tdsp_deploy.backends.synapse import predict_tsql

        prepared = self.prepare(package)
        values = predict_tsql.parameter_values(
            self.target, self.manifest, package.lock, prepared.payload, source=prepared.source
        )
        # the deployment document, plus the slot it was pushed as (read back by status)
        values["manifest"] = json.dumps(
            {**json.loads(values["manifest"]), "slot": slot}, sort_keys=True, separators=(",", ":")
        )
        stored = self._versions()
        before = _Before(
            next((v for v in stored if v["active"]), None),
            self._table_exists(),
            self._procedure_exists(),
            None if any(v["version"] == values["version"] for v in stored) else values["version"],
        )
        statements = predict_tsql.deployment_statements(self.target, self.manifest.name, self.target.outputs)
        by_name = {s.name: s for s in statements}
        conn = self.connection
        model = f"{self.manifest.model_name}:{package.lock.model_version}"
        try:
            self._run(by_name["create_model_table"], values, model, len(prepared.payload))
            self._run(by_name["create_procedure_stub"], values, model, len(prepared.payload))
            with conn.transaction():
                for name in predict_tsql.TRANSACTION:
                    self._run(by_name[name], values, model, len(prepared.payload))
            self._run(by_name["alter_procedure"], values, model, len(prepared.payload))
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
        """EXEC the procedure on a probe (the smoke request's first row, else no rows): PREDICT
        loads the model and answers, or the pool's error says why not."""
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
        """Re-activate the version active before ``deploy_slot``, rebuild its procedure and remove
        the row the push added; after a first push, remove the rows, the procedure and a model
        table the push created."""
        before = self._replaced.pop(slot, None)
        if before is None:  # unknown history (a later command): the newest other version
            others = [v for v in self._versions() if not v["active"]]
            before = _Before(others[-1] if others else None, True, bool(others))
        self._restore(before, None)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Only the split that is already the case (all calls to the active version) is accepted."""
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist", hint="push first")
        wanted = {k: v for k, v in traffic.items() if v}
        if wanted == {k: v for k, v in status.traffic.items() if v} and not any((mirror or {}).values()):
            return
        raise UsageError(
            "the synapse target's sql mode cannot split traffic: the active model version takes every call",
            hint="push with rollout.traffic 100, or `tdsp-deploy rollback` to re-activate an older version",
        )

    def delete(self, slot: str | None = None) -> None:
        """Drop the procedure; with the whole endpoint (``slot`` None), its rows too (and the
        model table when no other endpoint's rows are left in it)."""
        from tdsp_deploy.backends.synapse import predict_tsql

        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist")
        if slot is not None and status.slot(slot) is None:
            raise UsageError(
                f"endpoint '{self.manifest.name}' has no slot '{slot}'",
                hint=f"slots: {', '.join(s.name for s in status.slots) or 'none'}",
            )
        conn = self.connection
        conn.execute(predict_tsql.drop_procedure(self.target, self.manifest.name), doing="drop the procedure")
        if slot is None and self._table_exists():
            with conn.transaction():
                conn.execute(
                    predict_tsql.delete_rows(self.target), (self._endpoint_key(),), doing="delete rows"
                )
            conn.execute(predict_tsql.drop_table_if_empty(self.target), doing="drop the empty model table")

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """Callers that put the request's rows in a #temp table (bound ``?`` values) and EXEC
        the procedure on it; the answer is ``{"columns": [outputs..., "model_version"], "data"}``."""
        if slot is not None and self.status().slot(slot) is None:
            raise UsageError(f"slot '{slot}' is not the active model version of '{self.manifest.name}'")
        return self._callers()

    @contextlib.contextmanager
    def _callers(self) -> Iterator[Iterator[Caller]]:
        from tdsp_deploy.backends.synapse.sql_connection import SqlPoolConnection

        opened: list[SqlPoolConnection] = []

        def made() -> Iterator[Caller]:
            while True:
                if self._shared:
                    conn = self.connection
                else:
                    conn = SqlPoolConnection.connect(self.target)  # type: ignore[arg-type]
                    opened.append(conn)
                yield self._caller(conn)

        try:
            yield made()
        finally:
            for conn in opened:
                conn.close()

    def _caller(self, conn: SqlPoolConnection) -> Caller:
        from tdsp_deploy.backends.sqlserver import request_rows

        def call(body: bytes) -> InvokeResult:
            started = time.perf_counter()
            try:
                rows = request_rows(body, self.target.inputs)
            except ValueError as exc:
                return json_answer(400, {"error": str(exc)}, started)
            try:
                columns, result = self._score(rows, conn=conn, doing="score")
            except DeploymentFailed as exc:  # PREDICT or the procedure refused: an answer, not a crash
                return json_answer(500, {"error": exc.message}, started)
            return json_answer(200, answer(columns, result, self.target.outputs), started)

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
            self._tell("package", "converting the scikit-learn model to ONNX (one input per column)")
        smoke = self.manifest.smoke_test
        prepared = prepare_model(
            self._unpacked(package) / package.lock.model.path,
            self.manifest.model.flavor,
            self.target.inputs,
            self.target.outputs,
            sample_rows=self._sample_rows(),
            tolerance=smoke.tolerance if smoke is not None else 1e-6,
        )
        if prepared.parity is not None:
            self._tell(
                "package",
                f"ONNX parity: {prepared.parity.rows} sample row(s) agree "
                f"(largest difference {prepared.parity.largest_difference:.3g})",
            )
        self._prepared[package.package_id] = prepared
        return prepared

    # -- internals -----------------------------------------------------------------------
    def _run(self, statement: Any, values: dict[str, Any], model: str, size: int) -> None:
        self._tell(
            "deploy",
            STEP_MESSAGES.get(statement.name, statement.name).format(
                table=self._table_name(), procedure=self._procedure_name(), model=model, size=size
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
        try:
            if before.version is not None:
                version = before.version["version"]
                self._tell("rollback", f"re-activating model version {version}")
                with conn.transaction():
                    conn.execute(
                        predict_tsql.activate_version(self.target),
                        (self._endpoint_key(), version),
                        doing="re-activate the previous version",
                    )
                    if before.inserted is not None and before.inserted != version:
                        conn.execute(
                            predict_tsql.delete_version(self.target),
                            (self._endpoint_key(), before.inserted),
                            doing="remove the new version's row",
                        )
                outputs = [Column(**c) for c in before.version["document"].get("outputs", [])]
                if outputs:
                    conn.execute(
                        predict_tsql.alter_procedure(self.target, self.manifest.name, outputs),
                        doing="restore the previous procedure",
                    )
                return
            self._tell("rollback", f"removing {self._procedure_name()} and this endpoint's model rows")
            if self._table_exists():
                with conn.transaction():
                    conn.execute(
                        predict_tsql.delete_rows(self.target),
                        (self._endpoint_key(),),
                        doing="delete the rows",
                    )
            if not before.procedure:
                conn.execute(
                    predict_tsql.drop_procedure(self.target, self.manifest.name), doing="drop the procedure"
                )
            if not before.table:
                conn.execute(predict_tsql.drop_table_if_empty(self.target), doing="drop the model table")
        except TdspError as undo:
            if failure is None:
                raise
            failure.details["undo_failed"] = undo.message

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
        self, rows: Sequence[Sequence[Any]], *, conn: SqlPoolConnection | None = None, doing: str
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        from tdsp_deploy.backends.synapse import predict_tsql

        sql, params = predict_tsql.scoring_batch(self.target, self.manifest.name, rows)
        return (conn or self.connection).query(sql, params, doing=doing)

    def _active(self) -> dict[str, Any] | None:
        return next((v for v in self._versions() if v["active"]), None)

    def _versions(self) -> list[dict[str, Any]]:
        from tdsp_deploy.backends.synapse import predict_tsql

        if not self._table_exists():
            return []
        rows = self.connection.execute(
            predict_tsql.list_versions(self.target), (self._endpoint_key(),), doing="list the model versions"
        )
        versions = []
        for version, sha256, active, record in rows:
            try:
                document = json.loads(record) if record else {}
            except ValueError:
                document = {}
            versions.append(
                {
                    "version": str(version),
                    "sha256": sha256,
                    "active": bool(active),
                    "slot": document.get("slot"),
                    "document": document if isinstance(document, dict) else {},
                    "config_id": document_id(record) if record else None,
                }
            )
        return versions

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

    def _unpacked(self, package: BuiltPackage) -> Path:
        """The package extracted (and checked against its lock) once per content."""
        from tdsp_deploy import paths
        from tdsp_deploy.packaging import extract_once

        root = paths.state_home() / "synapse-sql" / "packages" / package.package_id
        return extract_once(package.path, root)

    def _tell(self, step: str, message: str, **numbers: Any) -> None:
        self.progress(ProgressEvent(step=step, message=message, **numbers))


def answer(columns: Sequence[str], rows: Sequence[Sequence[Any]], outputs: Sequence[Any]) -> dict[str, Any]:
    """The procedure's result (input columns, outputs, model_version) as the JSON answer: the
    outputs and model_version only, as the SQL Server target answers."""
    position = {name.lower(): i for i, name in enumerate(columns)}
    wanted = [*(c.name for c in outputs), "model_version"]
    missing = [name for name in wanted if name.lower() not in position]
    if missing:
        raise BackendError(
            f"the procedure's result has no column {', '.join(missing)} (columns: {list(columns)})"
        )
    picks = [position[name.lower()] for name in wanted]
    return {"columns": wanted, "data": [[row[i] for i in picks] for row in rows]}
