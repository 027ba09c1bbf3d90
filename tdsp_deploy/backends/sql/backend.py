"""The backend contract on a SQL engine, as SQL Server and a dedicated SQL pool both keep it.

The endpoint is a scoring procedure; its model versions are rows of the model table. A
deployment slot (blue, green, ...) is a row of the traffic table: the version it serves, its
traffic weight and the salt of the key hash. The procedure routes each call: pinned with
``@slot`` to that slot, else each row to a slot with a weight by a hash of its key
(``target.ab_key``, else its input values). ``set_traffic`` writes every slot's weight in one
transaction, and the engine refuses weights that do not add up to 100.

Everything goes through one ``SqlConnection`` (connection.py), the one door to the engine; tests
hand in a fake DB-API connection. This module imports no driver. A subclass says how its engine
stores a model, scores rows and undoes a push; both write the one request log (sql/schema.py),
which is read here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from tdsp_deploy.backends import base
from tdsp_deploy.backends.base import Backend, EndpointStatus, SlotStatus, json_answer
from tdsp_deploy.backends.sql import request_log
from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sql.request_log import iso, sortable
from tdsp_deploy.backends.sql.document import document_id
from tdsp_deploy.backends.sql.requests import (
    check_traffic_request,
    first_value_true,
    request_rows,
    scoring_call,
)
from tdsp_deploy.backends.sql.target import check_identifier, quote_identifier
from tdsp_deploy.errors import DeploymentFailed, EndpointNotFound, UsageError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.sql.connection import SqlConnection
    from tdsp_deploy.manifest.model import ManifestBase

#: failed calls (or requests) ``logs`` reads when no tail is asked for
FAILED_CALLS = 200
#: a result set's rows; a batch and its parameters; an answer and the slots that served it
Rows = list[tuple[Any, ...]]
Batch = tuple[str, list[Any]]
Answer = tuple[dict[str, Any], list[str]]


class SqlBackend(Backend):
    """What SQL Server and the dedicated SQL pool share; a subclass names its connection class,
    the column that keys an endpoint's rows, and what its engine does differently."""

    #: the procedure routes rows by weight (traffic table); nothing copies them
    supports_weighted_traffic = True
    supports_mirror = False
    #: the connection class (its DIALECT is the engine's)
    CONNECTION: ClassVar[type[SqlConnection]]
    #: the column of the three tables that keys an endpoint's rows, and who the target is in messages
    #: the column that keys an endpoint's rows (sql/schema.py): the procedure's name
    KEY: ClassVar[str] = "endpoint"
    WHO: ClassVar[str]
    #: how callers get the right to call the procedure (credentials' hint)
    GRANT_HINT: ClassVar[str]
    #: what a caller answers with status 500 instead of raising
    CALL_REFUSALS: ClassVar[tuple[type[Exception], ...]] = (DeploymentFailed,)
    #: what the smoke request's rows are read for, in the message when they cannot be
    SAMPLE_PURPOSE: ClassVar[str] = ""

    def __init__(
        self, manifest: ManifestBase, *, progress: Progress = base.no_progress, connection: Any = None
    ):
        super().__init__(manifest, progress=progress)
        self._connection: SqlConnection | None = None
        self._shared = connection is not None  # handed in: never closed, shared by callers
        if connection is not None:
            wrapped = isinstance(connection, self.CONNECTION)
            self._connection = connection if wrapped else self.CONNECTION(connection)
        # slot -> what deploy_slot changed, for discard_slot
        self._replaced: dict[str, Any] = {}
        self._schema_checked = False

    @property
    def connection(self) -> SqlConnection:
        """The connection, opened on first use (never when a test handed one in); on its first
        use a database of an earlier version is brought to the one schema (``_migrate``)
        before anything reads its tables."""
        if self._connection is None:
            self._connection = self.CONNECTION.connect(self.target)
        if not self._schema_checked:
            self._schema_checked = True
            self._migrate(self._connection)
        return self._connection

    @property
    def tables(self) -> sql_rows.Tables:
        return sql_rows.Tables.of(self.target, key=self.KEY, dialect=self.CONNECTION.DIALECT)

    # -- what a subclass says ---------------------------------------------------------------
    def _key(self) -> str:
        """The value of the KEY column for this endpoint's rows: the scoring procedure's name."""
        return check_identifier(self.target.procedure_name(self.manifest.name))

    #: how the scoring procedure is told where a call's rows are (requests.INPUT_TABLE)
    INPUT_ARGUMENT: ClassVar[str]

    def _input_rows(self, rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[Any]]:
        """The statements that put ``rows`` in requests.INPUT_TABLE, and their bound values."""
        raise NotImplementedError

    def _scoring_batch(self, rows: Sequence[Sequence[Any]], slot: str | None, request: str | None) -> Batch:
        """The batch that scores ``rows`` through the procedure, and its parameters."""
        return scoring_call(self._procedure_name(), self.INPUT_ARGUMENT, self._input_rows(rows), slot, request)

    def _answer(
        self,
        columns: list[str],
        result: list[tuple[Any, ...]],
        slot: str | None,
        serving: dict[str, list[str]],
    ) -> tuple[dict[str, Any], list[str]]:
        """The JSON answer to a call and the slots that served it."""
        raise NotImplementedError

    def _failure_events(self, slot: str, limit: int) -> list[tuple[Any, str]]:
        """(time, line) of the failed calls ``logs`` shows for ``slot``: status 500 in the
        request log, with the engine's error."""
        if not self.target.request_log or not self._exists(self.tables.requests, "U"):
            return []
        return request_log.failed_calls(self.connection, self.tables, self._key(), slot, limit)

    def _endpoint_details(self) -> dict[str, Any]:
        """The status details of an endpoint that exists (its versions are added after them)."""
        return {"procedure": self._procedure_name(), "model_table": self.tables.models}

    def _absent_details(self) -> dict[str, Any]:
        return {}

    def _slot_details(self, version: dict[str, Any] | None) -> dict[str, Any]:
        return {"sha256": version["sha256"] if version else None}

    def _undo(self, slot: str, note: Any) -> None:
        """Put back what deploy_slot changed (``note``: what it recorded)."""
        raise NotImplementedError

    def _remove_endpoint(self) -> None:
        """Remove the procedure(s) and this endpoint's rows."""
        raise NotImplementedError

    #: what the procedure logs, in the refusal when target.request_log is off
    LOGGED: ClassVar[str] = "the procedure logs no rows"

    def _log_start(self, since: float) -> datetime.datetime | None:
        """``since`` as the request log's time (UTC, no zone); None when there is no log table yet."""
        if not self.target.request_log:
            raise UsageError(
                f"target.request_log is off: {self.LOGGED} to analyze",
                hint="set target.request_log: true and push again",
            )
        if not self._exists(self.tables.requests, "U"):
            return None
        return datetime.datetime.fromtimestamp(since, datetime.UTC).replace(tzinfo=None)

    def _migrate(self, conn: SqlConnection) -> None:
        """Bring a database an earlier version made to the one schema (run once, on the
        connection's first use)."""

    # -- reading -------------------------------------------------------------------------
    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """The request log from ``since``: one record per scored row, as the A/B analysis reads
        them (request_log.py)."""
        started = self._log_start(since)
        if started is not None:
            yield from request_log.records(self.connection, self.tables, self._key(), started)

    def status(self) -> EndpointStatus:
        """The procedure, the model versions, and the slots of the traffic table."""
        procedure = self._procedure_exists()
        versions = self._versions()
        name = self.manifest.name
        if not procedure and not versions:
            return EndpointStatus(name=name, kind=self.kind, exists=False, details=self._absent_details())
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
                    package_id=version["document"].get("package_id") if version else None,
                    config_id=version["config_id"] if version else None,
                    details=self._slot_details(version),
                )
            )
        details = self._endpoint_details()
        details["versions"] = [
            {"version": v["version"], "sha256": v["sha256"], "active": v["active"]} for v in versions
        ]
        return EndpointStatus(
            name=name,
            kind=self.kind,
            exists=True,
            scoring_uri=self._scoring_uri(),
            slots=slots,
            details=details,
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The slot's history as the database keeps it, oldest first: each model version pushed
        as this slot (when, by whom, its sha256), the calls that failed (as the engine keeps
        them), and what it serves now; the last ``tail`` lines."""
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
                sha = str(version["sha256"])[:12]
                text = (
                    f"{slot}: pushed {model}:{version['version']} (sha256 {sha}, by {version['created_by']})"
                )
                events.append((version["created_at"], text))
        events += self._failure_events(slot, tail or FAILED_CALLS)
        events.sort(key=lambda event: sortable(event[0]))
        lines = [f"{iso(t)} {text}" for t, text in events]
        route = routes[slot]
        lines.append(f"now {slot}: {model}:{route['version']}, {route['weight']}% of traffic")
        return "\n".join(lines[-tail:] if tail else lines)

    def credentials(self) -> dict[str, str]:
        """None: callers authenticate to the database itself (target.auth)."""
        raise UsageError(
            f"{self.WHO} has no endpoint keys: callers use database authentication", hint=self.GRANT_HINT
        )

    # -- deploying -----------------------------------------------------------------------
    def wait_healthy(self, slot: str) -> SlotStatus:
        """EXEC the procedure pinned to ``slot`` on a probe (the smoke request's first row, else
        no rows): it loads the slot's model and answers, or the engine's error says why not."""
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
        """Undo ``deploy_slot`` as its note says. Without a note from ``deploy_slot`` (another
        process), a slot without traffic is removed."""
        note = self._replaced.pop(slot, None)
        if note is None:
            route = next((r for r in self._slots() if r["slot"] == slot), None)
            if route is not None and route["weight"] == 0:
                self.tell("rollback", f"removing slot {slot}")
                self._delete_slot(slot)
            return
        self._undo(slot, note)

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Every slot's weight (slots not named get 0) in one transaction; the engine checks
        that they add up to 100 (or 0) and marks the versions that take traffic active."""
        slots = self._slots()
        check_traffic_request(slots, traffic, mirror, self.WHO, self._procedure_name())
        self._write_weights([{**r, "weight": int(traffic.get(r["slot"], 0))} for r in slots])

    def _write_weights(self, routes: list[dict[str, Any]]) -> None:
        conn, key, tables = self.connection, self._key(), self.tables
        with conn.transaction():
            for route in routes:
                conn.execute(
                    sql_rows.set_weight(tables),
                    (key, route["slot"], route["weight"]),
                    doing="set the traffic",
                )
            conn.execute(sql_rows.refresh_active(tables), (key,), doing="set the traffic")

    def set_experiment(self, experiment_id: str) -> None:
        """A new experiment salts the key hash with its id: keys are shuffled afresh."""
        self.connection.execute(
            sql_rows.set_salt(self.tables), (self._key(), experiment_id), doing="start the experiment"
        )

    def delete(self, slot: str | None = None) -> None:
        """One slot (its traffic row; refused while it takes traffic), or the whole endpoint:
        the procedure(s) and this endpoint's rows."""
        status = self.status()
        if not status.exists:
            raise EndpointNotFound(f"procedure {self._procedure_name()} does not exist")
        if slot is None:
            self._remove_endpoint()
            return
        names = (s.name for s in status.slots)
        base.refuse_unless_deletable(self.manifest.name, slot, status.slot(slot), names, noun="slot")
        self._delete_slot(slot)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[base.Caller]]:
        """Callers that EXEC the procedure with the request's rows (bound ``?`` parameters),
        one connection each (or the handed-in one, shared), pinned to ``slot`` when given.
        The answer names the slot(s) that served it (``azureml-model-deployment``), as the HTTP
        targets do."""
        routes = self._slots()
        if slot is not None and slot not in {r["slot"] for r in routes}:
            raise UsageError(f"endpoint '{self.manifest.name}' has no slot '{slot}'")
        serving: dict[str, list[str]] = {}
        for route in routes:
            if route["weight"] > 0:
                serving.setdefault(route["version"], []).append(route["slot"])
        return self._callers(slot, serving)

    @contextlib.contextmanager
    def _callers(self, slot: str | None, serving: dict[str, list[str]]) -> Iterator[Iterator[base.Caller]]:
        opened: list[SqlConnection] = []

        def made() -> Iterator[base.Caller]:
            while True:
                if self._shared:
                    conn = self.connection
                else:
                    conn = self.CONNECTION.connect(self.target)
                    opened.append(conn)
                yield self._caller(conn, slot, serving)

        try:
            yield made()
        finally:
            for conn in opened:
                conn.close()

    def _caller(self, conn: SqlConnection, slot: str | None, serving: dict[str, list[str]]) -> base.Caller:
        def call(body: bytes) -> base.InvokeResult:
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
            except self.CALL_REFUSALS as exc:  # the engine refused the call: an answer, not a crash
                return json_answer(500, {"error": exc.message}, started, headers)  # type: ignore[attr-defined]
            document, served = self._answer(columns, result, slot, serving)
            if served:
                headers["azureml-model-deployment"] = ",".join(served)
            return json_answer(200, document, started, headers)

        return call

    # -- internals -----------------------------------------------------------------------
    def _sample_rows(self) -> list[list[Any]] | None:
        """The smoke request's rows, in the order of the inputs (None without a smoke test)."""
        smoke = self.manifest.smoke_test
        if smoke is None:
            return None
        try:
            return request_rows(smoke.request.read_bytes(), self.target.inputs)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"smoke_test.request cannot give the sample rows{self.SAMPLE_PURPOSE}: {exc}",
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
        conn: SqlConnection | None = None,
        slot: str | None = None,
        request_id: str | None = None,
        doing: str,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        sql, params = self._scoring_batch(rows, slot, request_id)
        return (conn or self.connection).query(sql, params, doing=doing)

    def _delete_slot(self, slot: str) -> None:
        conn, key = self.connection, self._key()
        with conn.transaction():
            conn.execute(sql_rows.delete_slot(self.tables), (key, slot), doing="delete the slot")
            conn.execute(sql_rows.refresh_active(self.tables), (key,), doing="delete the slot")

    def _restore_slots(self, slots: list[dict[str, Any]], *, clear: bool = True) -> None:
        """Inside a transaction: the endpoint's traffic rows as ``slots`` were (``clear``: the
        rows there now go first)."""
        conn, key, tables = self.connection, self._key(), self.tables
        if clear:
            conn.execute(sql_rows.delete_rows(tables, tables.traffic), (key,), doing="restore the slots")
        for route in slots:
            values = [key, *(route[c] for c in sql_rows.SLOT_COLUMNS)]
            conn.execute(sql_rows.restore_slot(tables), values, doing="restore the slots")

    def _versions(self) -> list[dict[str, Any]]:
        """The endpoint's model versions, oldest first, each with its deployment document."""
        if not self._exists(self.tables.models, "U"):
            return []
        rows = self.connection.execute(
            sql_rows.list_versions(self.tables), (self._key(),), doing="list the model versions"
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
        if not self._exists(self.tables.traffic, "U"):
            return []
        rows = self.connection.execute(
            sql_rows.list_slots(self.tables), (self._key(),), doing="list the slots"
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

    def _exists(self, name: str, kind: str) -> bool:
        return first_value_true(self.connection.execute(f"SELECT OBJECT_ID(?, N'{kind}');", (name,)))

    def _procedure_exists(self) -> bool:
        return self._exists(self._procedure_name(), "P")

    def _procedure_name(self) -> str:
        procedure = self.target.procedure_name(self.manifest.name)
        return f"{quote_identifier(self.target.schema_)}.{quote_identifier(procedure)}"

    def _scoring_uri(self) -> str:
        return f"mssql://{self.target.server}/{self.target.database}/{self._procedure_name()}"
