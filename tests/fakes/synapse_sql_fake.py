"""A fake dedicated SQL pool behind a DB-API connection, enforcing what the pool would.

``FakeSqlPool`` holds the database (tables with rows, procedures with their definitions);
``connect()`` gives a DB-API connection (``autocommit`` as drivers have it, off by default;
``cursor().execute(sql, params)``, ``fetchall``, ``nextset``) with its own session (#temp tables).

What it enforces, after the documentation of dedicated SQL pools (Azure Synapse):
- transactions: ``BEGIN TRANSACTION`` ... ``COMMIT`` / ``ROLLBACK``; with autocommit off the
  first statement opens one implicitly, as the driver does; no nested transactions; no DDL
  (CREATE/ALTER/DROP TABLE or PROCEDURE) inside a user transaction; after an error inside one,
  every statement but the rollback fails with Msg 111233 ("The current transaction has
  aborted..."); ``ROLLBACK`` restores the database as it was;
- no ``CREATE OR ALTER``; CREATE PROCEDURE first in its batch; ALTER of a missing procedure
  fails; PRIMARY KEY only NONCLUSTERED NOT ENFORCED; no DEFAULT constraints with functions;
- no UPDATE with an ANSI join, no SELECT assigning several variables (refused when a batch has
  one);
- PREDICT (``RUNTIME = ONNX``, run here with onnxruntime): the model is a scalar subquery (more
  than one row fails with Msg 512, none is a NULL model); each model input is fed from the DATA
  column of the same name, which must exist and have the SQL type of the input's tensor type,
  one column per input ([N] or [N, 1]); every WITH column names a model output; the result is
  the DATA columns (d.*), the WITH columns converted to their types, the version and the slot;
- EXEC of the scoring procedure does what its T-SQL says: the routes from the traffic table (the
  pinned ``@slot`` with every bucket, else the slots with a weight, cumulative in slot order),
  each row's key bucket by evaluating the HASHBYTES expression written in the procedure's text
  (its CONVERT/CAST key parts, converted as the pool converts: a float CONVERT without style 2
  keeps 6 digits), one PREDICT per route, and the procedure's request log INSERT (status 500
  when PREDICT failed, which is then re-thrown as 50007 with the pool's message);
- sys.dm_pdw_exec_requests and sys.dm_pdw_errors: every statement is a request (the procedure's
  labelled query another), failures with their error text; reading them needs VIEW DATABASE
  STATE (``may_view_state``), and a query may name only the columns the views document.
Where the documentation gives a rule but not the server's wording, the message is the fake's own.

Failure injection: ``fail_on = N`` fails the Nth statement from now on (1 = the next one);
``fail_matching = "regex"`` fails the first statement that matches.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import re
import threading
from typing import Any

import numpy as np

from tests.fakes.dbapi_fake import (
    DatabaseError,
    FakeCursor,
    InterfaceError,
    OperationalError,
    server_error,
)

_NAME = r"((?:\[(?:[^\]]|\]\])*\]|#?\w+)(?:\s*\.\s*(?:\[(?:[^\]]|\]\])*\]|\w+))?)"
_DDL = re.compile(r"\b(?:(CREATE|ALTER|DROP)\s+(TABLE|PROC|PROCEDURE)|RENAME\s+OBJECT)\b", re.I)
#: the tensor element type (onnxruntime's name) PREDICT passes for each SQL type
_TENSOR = {
    "int": "tensor(int32)",
    "bigint": "tensor(int64)",
    "real": "tensor(float)",
    "float": "tensor(double)",
    "char": "tensor(string)",
    "varchar": "tensor(string)",
    "nvarchar": "tensor(string)",
}
_NUMPY = {"int": np.int32, "bigint": np.int64, "real": np.float32, "float": np.float64}
#: PREDICT's WITH clause (its column types may hold parentheses: nvarchar(16))
_WITH_CLAUSE = r"RUNTIME = ONNX\) WITH \(([^)]*(?:\([^)]*\)[^)]*)*)\) AS p"
#: the columns sys.dm_pdw_exec_requests and sys.dm_pdw_errors document (learn.microsoft.com)
_REQUESTS = "request_id session_id status submit_time start_time end_compile_time end_time total_elapsed_time"
_REQUESTS += " label error_id database_id command resource_class importance group_name classifier_name"
_REQUESTS += " resource_allocation_percentage result_cache_hit client_correlation_id"
REQUEST_COLUMNS = frozenset(_REQUESTS.split())
ERROR_COLUMNS = frozenset(
    ("error_id", "source", "type", "create_time", "pdw_node_id", "session_id", "request_id", "spid")
    + ("thread_id", "details")
)


def _name(text: str) -> str:
    """A one- or two-part name without brackets, lower case (the default collation ignores case)."""
    parts = [
        p.strip().strip("[]").replace("]]", "]") for p in re.findall(r"\[(?:[^\]]|\]\])*\]|[^.\s\[\]]+", text)
    ]
    if len(parts) == 1 and not parts[0].startswith("#"):
        parts = ["dbo", *parts]
    return ".".join(parts).lower()


def _base(sql_type: str) -> str:
    return sql_type.replace(" ", "").lower().split("(", 1)[0]


@dataclasses.dataclass
class Table:
    columns: list[tuple[str, str]]  # (name, SQL type)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __eq__(self, other: object) -> bool:  # a table's rows have no order
        if not isinstance(other, Table):
            return NotImplemented
        return self.columns == other.columns and sorted(map(repr, self.rows)) == sorted(map(repr, other.rows))


@dataclasses.dataclass
class Database:
    tables: dict[str, Table] = dataclasses.field(default_factory=dict)
    procedures: dict[str, str] = dataclasses.field(default_factory=dict)


class FakeSqlPool:
    def __init__(self, *, may_view_state: bool = True, predict_enabled: bool = True) -> None:
        self.db = Database()
        #: PREDICT is off by default in dedicated pools; off, the parser does not know MODEL =
        #: (the refusal's wording is the one reported for such pools: a syntax error near MODEL)
        self.predict_enabled = predict_enabled
        self.fail_on: int | None = None
        self.fail_matching: str | None = None
        self.statements: list[str] = []
        self.executed_params: list[tuple[Any, ...]] = []
        self.predict_calls = 0
        #: VIEW DATABASE STATE: reading the sys.dm_pdw_* views needs it
        self.may_view_state = may_view_state
        #: sys.dm_pdw_exec_requests and sys.dm_pdw_errors: one dict per row, documented columns
        self.requests: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        #: (slot, version, row number) of every row a split routed, for assertions
        self.routed: list[tuple[str, str, int]] = []
        self._lock = threading.RLock()
        self._last = datetime.datetime.min  # the last GETUTCDATE() handed out
        self._sessions = 0

    def connect(self) -> FakePoolConnection:
        return FakePoolConnection(self)

    def state(self) -> Database:
        return copy.deepcopy(self.db)

    def rows(self, table: str = "dbo.tdsp_models") -> list[dict[str, Any]]:
        found = self.db.tables.get(table)
        return [] if found is None else found.rows

    # -- one statement or batch -------------------------------------------------------------
    def run(
        self, conn: FakePoolConnection, sql: str, params: tuple[Any, ...]
    ) -> tuple[list[str], list[tuple]]:
        with self._lock:
            request = self._request(conn, sql)
            try:
                answer = self._run(conn, sql, params)
            except DatabaseError as exc:
                self._failed(request, exc)
                raise
            request["status"] = "Completed"
            return answer

    def _request(self, conn: FakePoolConnection, command: str, label: str | None = None) -> dict[str, Any]:
        """A row of sys.dm_pdw_exec_requests (the view keeps the last 10,000)."""
        when = self._now()
        request = {
            "request_id": f"QID{len(self.requests) + 1}",
            "session_id": conn.session_id,
            "status": "Running",
            "submit_time": when,
            "start_time": when,
            "end_time": None,
            "label": label,
            "error_id": None,
            "command": command[:4000],
        }
        self.requests.append(request)
        del self.requests[:-10000]
        return request

    def _failed(self, request: dict[str, Any], exc: BaseException) -> None:
        error_id = f"ERR{len(self.errors) + 1}"
        request.update(status="Failed", error_id=error_id)
        self.errors.append(
            {
                "error_id": error_id,
                "source": "User",
                "type": type(exc).__name__,
                "create_time": request["submit_time"],
                "pdw_node_id": 1,
                "session_id": request["session_id"],
                "request_id": request["request_id"],
                "spid": 1,
                "thread_id": 1,
                "details": re.sub(r"^.*\[SQL Server\]", "", " ".join(map(str, exc.args))),
            }
        )

    def _run(
        self, conn: FakePoolConnection, sql: str, params: tuple[Any, ...]
    ) -> tuple[list[str], list[tuple]]:
        self.statements.append(sql)
        self.executed_params.append(params)
        sql = re.sub(r"\A-- tdsp-deploy: \w+\n", "", sql)  # the tag a batch of rows starts with
        flat = " ".join(sql.split())
        upper = flat.upper()
        rollback = upper.endswith("ROLLBACK TRANSACTION;")
        if conn.aborted and not rollback:
            raise server_error(
                111233,
                "111233; The current transaction has aborted, and any pending changes have been "
                "rolled back. Cause: A transaction in a rollback-only state was not explicitly rolled "
                "back before a DDL, "
                "DML, or SELECT statement.",
            )
        try:
            self._inject(sql)
            markers = len(re.findall(r"\?", re.sub(r"N?'(?:[^']|'')*'", "''", sql)))
            if markers != len(params):
                raise server_error(
                    8178,
                    f"The parameterized query expects {markers} parameter(s), {len(params)} supplied",
                )
            if not conn.autocommit and conn.snapshot is None and not rollback:
                conn.begin()  # the driver's implicit transaction
            if conn.snapshot is not None and _DDL.search(_without_literals(flat)) and "#TDSP" not in upper:
                raise server_error(
                    50000,
                    "Operation not allowed: the dedicated SQL pool runs no DDL (CREATE TABLE, "
                    "CREATE/ALTER/DROP PROCEDURE) inside a user transaction.",
                )
            return self._dispatch(conn, sql, flat, upper, params)
        except DatabaseError:
            if conn.snapshot is not None:
                conn.aborted = True
            raise

    def _inject(self, sql: str) -> None:
        if self.fail_on is not None:
            self.fail_on -= 1
            if self.fail_on == 0:
                self.fail_on = None
                raise server_error(50000, "injected failure", OperationalError, "HY000")
        if self.fail_matching is not None and re.search(self.fail_matching, sql, re.I | re.S):
            self.fail_matching = None
            raise server_error(50000, "injected failure", OperationalError, "HY000")

    def _dispatch(self, conn, sql, flat, upper, params):  # noqa: C901 - one branch per statement shape
        if "CREATE OR ALTER" in upper:
            raise server_error(103010, "Parse error: CREATE OR ALTER is not supported in dedicated SQL pool.")
        if upper == "BEGIN TRANSACTION;":
            if conn.snapshot is not None:
                raise server_error(50000, "No nested transactions permitted in a dedicated SQL pool.")
            conn.begin()
            return [], []
        if upper == "COMMIT TRANSACTION;":
            conn.commit()
            return [], []
        if upper.endswith("ROLLBACK TRANSACTION;"):
            conn.rollback()
            return [], []
        if re.match(r"^ALTER PROC(EDURE)?\b", flat, re.I):
            match = re.match(r"^ALTER PROC(?:EDURE)?\s+" + _NAME, flat, re.I)
            name = _name(match.group(1))
            if name not in self.db.procedures:
                raise server_error(208, f"Invalid object name '{name}'.")
            self.db.procedures[name] = sql
            return [], []
        if re.search(r"\b(CREATE|ALTER) PROC", upper) and not re.match(
            r"^IF OBJECT_ID\(N'[^']+', N'P'\) IS NULL EXEC \(N'CREATE PROC", flat, re.I
        ):
            raise server_error(111, "'CREATE/ALTER PROCEDURE' must be the first statement in a query batch.")
        match = re.match(
            r"^IF OBJECT_ID\(N'([^']+)', N'P'\) IS NULL EXEC \(N'(CREATE PROCEDURE (.+?) AS .*)'\);$",
            flat,
            re.I,
        )
        if match:
            name = _name(match.group(1))
            if name not in self.db.procedures:
                self.db.procedures[name] = match.group(2)
            return [], []
        match = re.match(
            r"^IF OBJECT_ID\(N'([^']+)', N'U'\) IS NULL CREATE TABLE " + _NAME + r" \((.*)\) WITH \((.*)\);$",
            flat,
            re.I,
        )
        if match:
            return self._create_table(_name(match.group(2)), match.group(3), match.group(4))
        match = re.match(
            r"^IF OBJECT_ID\(N'([^']+)', N'P'\) IS NOT NULL DROP PROCEDURE " + _NAME + ";$", flat, re.I
        )
        if match:
            self.db.procedures.pop(_name(match.group(2)), None)
            return [], []
        match = re.match(
            r"^IF OBJECT_ID\(N'([^']+)', N'U'\) IS NOT NULL AND NOT EXISTS \(SELECT 1 FROM "
            + _NAME
            + r"\) DROP TABLE "
            + _NAME
            + ";$",
            flat,
            re.I,
        )
        if match:
            table = self.db.tables.get(_name(match.group(3)))
            if table is not None and not table.rows:
                del self.db.tables[_name(match.group(3))]
            return [], []
        if upper.startswith("DECLARE") and ("INSERT INTO" in upper or "UPDATE" in upper):
            return self._declared(flat, upper, params)
        match = re.match(
            r"^DELETE FROM " + _NAME + r" WHERE \[endpoint\] = \?( AND \[(version|slot)\] = \?)?;$",
            flat,
            re.I,
        )
        if match:
            table = self._table(match.group(1))
            column = match.group(3)
            keep = (
                (lambda r: r["endpoint"] != params[0] or r[column] != params[1])
                if column
                else (lambda r: r["endpoint"] != params[0])
            )
            table.rows[:] = [r for r in table.rows if keep(r)]
            return [], []
        match = re.match(
            r"^SELECT (?:TOP \((\d+)\) )?(.+?) FROM "
            + _NAME
            + r" WHERE \[endpoint\] = \?( AND \[t\] >= \?)? ORDER BY ([\[\]\w, ]+);$",
            flat,
            re.I,
        )
        if match:
            top = match.group(1)
            table = self._table(match.group(3))
            columns = [c.strip(" []") for c in match.group(2).split(",")]
            order = [c.strip(" []") for c in match.group(5).split(",")]
            since = params[1] if match.group(4) else None
            known = {c for c, _ in table.columns}
            for column in columns + order:
                if column not in known:
                    raise server_error(207, f"Invalid column name '{column}'.")
            rows = sorted(
                (r for r in table.rows if r["endpoint"] == params[0] and (since is None or r["t"] >= since)),
                key=lambda r: tuple(str(r[c]).lower() if isinstance(r[c], str) else r[c] for c in order),
            )
            if top is not None:
                rows = rows[: int(top)]
            return columns, [tuple(r[c] for c in columns) for r in rows]
        if "SYS.DM_PDW_" in upper:
            return self._dmv(conn, flat, params)
        if "SYS.SQL_MODULES" in upper or upper.startswith("RENAME OBJECT") or "WHERE [ENDPOINT] IS NOT NULL" in upper:
            return self._migration(flat, params)
        match = re.match(r"^SELECT OBJECT_ID\(\?, N'(U|P)'\);$", flat, re.I)
        if match:
            found = _name(params[0]) in (self.db.tables if match.group(1) == "U" else self.db.procedures)
            return [""], [(1 if found else None,)]
        if upper.startswith("SET NOCOUNT ON; IF OBJECT_ID(N'TEMPDB..#TDSP_INPUT')"):
            return self._scoring_batch(conn, flat, params)
        raise server_error(102, f"Incorrect syntax near '{flat[:40]}'.")

    # -- tables and rows ----------------------------------------------------------------------
    def _create_table(self, name: str, body: str, options: str) -> tuple[list, list]:
        if re.search(r"PRIMARY KEY", body, re.I) and not re.search(
            r"PRIMARY KEY NONCLUSTERED .*NOT ENFORCED", body, re.I
        ):
            raise server_error(
                104467,
                "Enforced unique constraints are not supported. To create an unenforced "
                "unique constraint you must include the NOT ENFORCED syntax as part of your statement.",
            )
        if re.search(r"\bDEFAULT\b", body, re.I):
            raise server_error(
                50000, "DEFAULT constraints with functions are not supported in dedicated SQL pool."
            )
        if "DISTRIBUTION" not in options.upper():
            raise server_error(102, "Incorrect syntax near 'WITH'.")
        if name not in self.db.tables:
            columns = [
                (m.group(1), m.group(2)) for m in re.finditer(r"\[(\w+)\] ([\w()]+) (?:NOT )?NULL", body)
            ]
            self.db.tables[name] = Table(columns)
        return [], []

    def _table(self, text: str) -> Table:
        name = _name(text)
        if name not in self.db.tables:
            raise server_error(208, f"Invalid object name '{name}'.")
        return self.db.tables[name]

    def _now(self) -> datetime.datetime:
        """GETUTCDATE(), made strictly increasing so that rows written in one test keep an order."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self._last = max(now, self._last + datetime.timedelta(microseconds=1))
        return self._last

    def _declared(self, flat: str, upper: str, params: tuple) -> tuple[list, list]:  # noqa: C901
        """The DECLARE ... batches of predict_tsql, told apart by the variables they bind."""
        if re.search(r"\bUPDATE\b[^;]*\bFROM\b[^;]*\bJOIN\b", flat, re.I):
            raise server_error(100071, "UPDATE with an ANSI join is not supported in dedicated SQL pool.")
        if re.search(r"SELECT\s+@\w+\s*=[^;]*,\s*@\w+\s*=", flat, re.I):
            raise server_error(100072, "Assigning several variables in one SELECT is not supported.")
        declared = re.findall(r"@(\w+) [\w()]+ = (\?|NULL\b)", flat)
        if sum(1 for _, marker in declared if marker == "?") != len(params):
            raise server_error(137, "Must declare the scalar variable.")
        bound = iter(params)  # a None is written as NULL, not bound (connection.bind_nulls)
        variables = {name: next(bound) if marker == "?" else None for name, marker in declared}
        names = set(variables)
        tables = [self._table(t) for t in dict.fromkeys(re.findall(r"\[\w+\]\.\[\w+\]", flat))]
        endpoint = variables["endpoint"]
        if names == {"endpoint", "name", "version", "sha256", "flavor", "payload", "manifest"}:
            table = tables[0]
            same = [
                r for r in table.rows if r["endpoint"] == endpoint and r["version"] == variables["version"]
            ]
            if same and same[0]["sha256"] != variables["sha256"]:
                raise server_error(
                    50001,
                    "this model version is already stored with other content; give the model a new version",
                )
            if not same:
                table.rows.append(
                    {**variables, "created_at": self._now(), "created_by": "deployer", "active": 0}
                )
            return [], []
        if names == {"endpoint", "slot", "version"}:  # assign_slot: models, then traffic
            models, traffic = tables
            if not any(
                r["endpoint"] == endpoint and r["version"] == variables["version"] for r in models.rows
            ):
                raise server_error(50002, "this model version is not in the model table; insert it first")
            found = [r for r in traffic.rows if r["endpoint"] == endpoint and r["slot"] == variables["slot"]]
            if found:
                found[0].update(version=variables["version"], updated_at=self._now())
            else:
                salts = [
                    r["salt"] for r in traffic.rows if r["endpoint"] == endpoint and r["salt"] is not None
                ]
                traffic.rows.append(
                    {
                        **variables,
                        "weight": 0,
                        "salt": max(salts) if salts else None,
                        "updated_at": self._now(),
                    }
                )
            return [], []
        if names == {"endpoint", "slot", "weight"}:  # set_weight
            (traffic,) = tables
            found = [r for r in traffic.rows if r["endpoint"] == endpoint and r["slot"] == variables["slot"]]
            if not found:
                raise server_error(50004, "this endpoint has no such deployment slot")
            if not 0 <= int(variables["weight"]) <= 100:
                raise server_error(547, "The UPDATE statement conflicted with the weight's range.")
            found[0].update(weight=int(variables["weight"]), updated_at=self._now())
            return [], []
        if names == {"endpoint"} and "@TOTAL" in upper:  # refresh_active: traffic, then models
            traffic, models = tables[1], tables[0]
            if "[weight]" in {f"[{c}]" for c, _ in models.columns}:
                traffic, models = models, traffic
            total = sum(r["weight"] for r in traffic.rows if r["endpoint"] == endpoint)
            if total not in (0, 100):
                raise server_error(
                    50005, "the traffic weights of this endpoint's slots must add up to 100 (or 0)"
                )
            serving = {r["version"] for r in traffic.rows if r["endpoint"] == endpoint and r["weight"] > 0}
            for row in models.rows:
                if row["endpoint"] == endpoint:
                    row["active"] = 1 if row["version"] in serving else 0
            return [], []
        if names == {"endpoint", "salt"}:  # set_salt
            (traffic,) = tables
            for row in traffic.rows:
                if row["endpoint"] == endpoint:
                    row["salt"] = variables["salt"]
            return [], []
        if names == {"endpoint", "slot", "version", "weight", "salt", "updated_at"}:  # restore_slot
            (traffic,) = tables
            traffic.rows.append(dict(variables))
            return [], []
        raise server_error(102, f"Incorrect syntax near '{flat[:40]}' (the fake does not know this batch).")

    # -- scoring --------------------------------------------------------------------------------
    def _scoring_batch(self, conn: FakePoolConnection, flat: str, params: tuple) -> tuple[list, list]:
        create = re.search(
            r"CREATE TABLE #tdsp_input \((.*?)\) WITH \(DISTRIBUTION = ROUND_ROBIN, HEAP\);", flat
        )
        if create is None:
            raise server_error(102, "Incorrect syntax near 'CREATE'.")
        columns = [(m.group(1), m.group(2)) for m in re.finditer(r"\[(\w+)\] ([\w()]+)", create.group(1))]
        rows: list[dict[str, Any]] = []
        selects = re.findall(r"SELECT (\d+), ((?:CAST\((?:\?|NULL) AS [\w()]+\)(?:, )?)+)", flat)
        width = len(columns) - 1  # the row number is written in the text, not bound
        match = re.search(
            r"EXEC " + _NAME + r" @input_table = N'([^']*)', @slot = (\?|NULL), @request_id = (\?|NULL);",
            flat,
        )
        if match is None:
            raise server_error(102, "Incorrect syntax near 'EXEC'.")
        markers = [m for _, cells in selects for m in re.findall(r"CAST\((\?|NULL) AS", cells)]
        markers += [match.group(3), match.group(4)]
        if len(markers) != width * len(selects) + 2 or markers.count("?") != len(params):
            raise server_error(8178, "The parameterized query expects another number of parameters")
        bound = iter(params)  # a None is written as NULL, not bound (connection.bind_nulls)
        given = [next(bound) if marker == "?" else None for marker in markers]
        for index, (number, _) in enumerate(selects):
            values = (int(number), *given[index * width : (index + 1) * width])
            rows.append(
                {name: _cast(v, sql_type, name) for (name, sql_type), v in zip(columns, values, strict=True)}
            )
        conn.temp["#tdsp_input"] = Table(columns, rows)
        try:
            return self._exec(conn, _name(match.group(1)), match.group(2), given[-2], given[-1])
        finally:
            conn.temp.pop("#tdsp_input", None)

    def _exec(
        self, conn: FakePoolConnection, name: str, input_table: str, slot: str | None, request_id: str | None
    ) -> tuple[list, list]:
        """What predict_tsql.alter_procedure's T-SQL does: the routes from the traffic table
        (CTAS of #tdsp_routes), each row's key bucket by the HASHBYTES expression written in the
        procedure, one PREDICT per route with its model on its rows, UNION ALL."""
        if name not in self.db.procedures:
            raise server_error(2812, f"Could not find stored procedure '{name}'.")
        definition = self.db.procedures[name]
        flat = " ".join(definition.split())
        if "PREDICT(" not in flat:  # the stub
            return ["stub"], [(1,)]
        parts = input_table.split(".")
        if len(parts) > 2 or not parts[-1]:
            raise server_error(50006, "@input_table must name a table or view: [schema.]name or #temp")
        routes = self._routes(flat, slot)
        data = (
            conn.temp.get(input_table)
            if input_table.startswith("#")
            else self.db.tables.get(_name(input_table))
        )
        if data is None:
            raise server_error(208, f"Invalid object name '{input_table}'.")
        model_table, key = re.search(
            r"SELECT m\.\[payload\] FROM " + _NAME + r" AS m JOIN #tdsp_routes AS r ON m\.\[version\] = "
            r"r\.\[version\] WHERE m\.\[endpoint\] = N''(\w+)''",
            flat,
        ).groups()
        outputs = [
            (m.group(1), m.group(2))
            for m in re.finditer(r"\[(\w+)\] ([\w()]+)", re.search(_WITH_CLAUSE, flat).group(1))
        ]
        bucket = _bucket_function(flat, dict(data.columns))
        label = re.search(r"OPTION \(LABEL = N''(\w+)''\)", flat).group(1)
        request = self._request(conn, f"-- the dynamic scoring query of {name}", label)
        routed = {
            route["slot"]: [
                r for r in data.rows if route["low"] <= bucket(r, route["salt"]) <= route["high"] - 1
            ]
            for route in routes
        }
        try:
            if not self.predict_enabled:
                raise server_error(
                    103010, "Parse error at line: 4, column: 14: Incorrect syntax near 'MODEL'."
                )
            answers = []
            for route in routes:
                rows = routed[route["slot"]]
                models = [
                    r
                    for r in self._table(model_table).rows
                    if r["endpoint"] == key and r["version"] == route["version"]
                ]
                if len(models) > 1:
                    raise server_error(512, "Subquery returned more than 1 value.")
                if not models:
                    raise server_error(50000, "PREDICT: the MODEL is NULL.")
                scored = self.predict(models[0]["payload"], Table(data.columns, rows), outputs)
                for row, answer in zip(rows, scored, strict=True):
                    answers.append((*answer, route["version"], route["slot"]))
                    self.routed.append((route["slot"], route["version"], row.get("tdsp_row")))
        except DatabaseError as exc:  # the procedure's CATCH: logged as 500, re-thrown as 50007
            self._failed(request, exc)
            message = re.sub(r"^.*\[SQL Server\]", "", " ".join(map(str, exc.args)))
            self._log_requests(flat, key, routes, routed, dict(data.columns), request_id, slot, 500, message)
            raise server_error(50007, re.sub(r" \(\d+\)$", "", message)) from None
        request["status"] = "Completed"
        self._log_requests(flat, key, routes, routed, dict(data.columns), request_id, slot, 200)
        names = [c for c, _ in data.columns] + [c for c, _ in outputs] + ["model_version", "variant"]
        return names, answers

    def _log_requests(
        self,
        flat: str,
        key: str,
        routes: list[dict[str, Any]],
        routed: dict[str, list[dict[str, Any]]],
        types: dict[str, str],
        request_id: str | None,
        slot: str | None,
        status: int,
        error: str | None = None,
    ) -> None:
        """The procedure's dynamic INSERT into the request log, when its text has one: a row
        per slot that answered (its rows counted, their ab_key texts listed as its STRING_AGG
        writes them), or -- a procedure an earlier version wrote -- a row per scored row. The
        INSERT's columns must be the table's (Msg 207)."""
        match = re.search(r"INSERT INTO " + _NAME + r" \(((?:\[\w+\](?:, )?)+)\) SELECT N''(\w+)''", flat)
        if match is None:
            return
        table, listed, endpoint = match.groups()
        if endpoint != key:
            raise server_error(50000, "the request log names another endpoint than the procedure")
        log = self._table(table)
        known = {c for c, _ in log.columns}
        for column in re.findall(r"\[(\w+)\]", listed):
            if column not in known:
                raise server_error(207, f"Invalid column name '{column}'.")
        request_id = request_id or f"NEWID-{len(self.requests)}"
        count = sum(len(rows) for rows in routed.values())
        now = self._now()
        per_call = re.search(
            r"@status, COUNT\(\*\), @elapsed_ms \* 1\.0 / SUM\(COUNT\(\*\)\) OVER \(\), (.+?), @pinned, "
            r"LEFT\(@error, 2000\) FROM ' \+ @source \+ N' AS s JOIN #tdsp_routes AS r ON .+ "
            r"GROUP BY r\.\[slot\], r\.\[version\];",
            flat,
        )
        def logged(route: dict[str, Any], **columns: Any) -> dict[str, Any]:
            call = {"endpoint": endpoint, "t": now, "request_id": request_id, "status": status}
            answered = {"slot": route["slot"], "version": route["version"], "latency_ms": 1.0 / max(count, 1)}
            return {**call, **answered, "pinned": 0 if slot is None else 1, **columns}

        if per_call is not None:
            keys = _keys_function(per_call.group(1), types)
            for route in routes:
                rows = routed[route["slot"]]
                if rows:  # GROUP BY: a slot without rows has no group
                    message = None if error is None else error[:2000]
                    log.rows.append(logged(route, row_count=len(rows), row_keys=keys(rows), message=message))
            return
        earlier = re.search(r"@request_id, r\.\[slot\], r\.\[version\], @status, (.+?) AS \[row_key\]", flat)
        if earlier is None:
            raise server_error(102, "the fake does not know this request log INSERT")
        key_expression = earlier.group(1)
        row_key = (
            None if key_expression == "CAST(NULL AS nvarchar(4000))" else _key_part(key_expression, types)
        )
        for route in routes:
            for row in routed[route["slot"]]:
                log.rows.append(logged(route, row_key=None if row_key is None else row_key(row)))

    def _routes(self, flat: str, slot: str | None) -> list[dict[str, Any]]:
        """#tdsp_routes as the procedure's CTAS makes it: the pinned slot with every bucket, else
        the slots with a weight in name order, each with [low, high) of the cumulative weights."""
        traffic_name, key = re.search(
            r"FROM " + _NAME + r" WHERE \[endpoint\] = N'(\w+)' AND \(\[slot\] = @slot OR "
            r"\(@slot IS NULL AND \[weight\] > 0\)\);",
            flat,
        ).groups()
        if "SUM([weight]) OVER (ORDER BY [slot] ROWS UNBOUNDED PRECEDING)" not in flat:
            raise server_error(102, "the fake knows the routes only as cumulative weights in slot order")
        found = [
            r
            for r in self._table(traffic_name).rows
            if r["endpoint"] == key and (r["slot"] == slot if slot is not None else r["weight"] > 0)
        ]
        found.sort(key=lambda r: r["slot"].lower())
        routes, upto = [], 0
        for route in found:
            low, high = (0, 100) if slot is not None else (upto, upto + route["weight"])
            upto += route["weight"]
            routes.append({**route, "low": low, "high": high, "salt": route["salt"] or ""})
        if not routes:
            raise server_error(
                50003, "no slot of this endpoint takes traffic (or @slot names none); push the model first"
            )
        return routes

    # -- sql_migrate.py's statements, as their T-SQL says ----------------------------------------
    def _migration(self, flat: str, params: tuple) -> tuple[list, list]:
        match = re.match(
            r"^SELECT CASE WHEN OBJECT_ID\(N'([^']+)', N'U'\) IS NOT NULL AND COL_LENGTH\(N'\1', N'row_key'\) "
            r"IS NOT NULL THEN 1 WHEN OBJECT_ID\(N'\1', N'U'\) IS NULL AND OBJECT_ID\(N'([^']+)', N'U'\) IS NOT NULL "
            r"THEN 2 ELSE 0 END AS \[state\], \(SELECT COUNT\(\*\) FROM sys\.sql_modules WHERE \[definition\] "
            r"LIKE \?\) AS \[procedures\];$",
            flat,
        )
        if match:
            log = self.db.tables.get(_name(match.group(1)))
            if log is not None:
                state = 1 if "row_key" in {c for c, _ in log.columns} else 0
            else:
                state = 2 if _name(match.group(2)) in self.db.tables else 0
            like = _like(params[0])
            return ["state", "procedures"], [(state, sum(1 for d in self.db.procedures.values() if like.match(d)))]
        if re.match(
            r"^SELECT OBJECT_SCHEMA_NAME\(\[object_id\]\) AS \[schema_name\], OBJECT_NAME\(\[object_id\]\) AS "
            r"\[procedure_name\], \[definition\] FROM sys\.sql_modules WHERE \[definition\] LIKE \?;$",
            flat,
        ):
            like = _like(params[0])
            found = sorted((n, d) for n, d in self.db.procedures.items() if like.match(d))
            return ["schema_name", "procedure_name", "definition"], [(*n.split(".", 1), d) for n, d in found]
        match = re.match(r"^RENAME OBJECT " + _NAME + r" TO \[(\w+)\];$", flat)
        if match:
            old = _name(match.group(1))
            new = f"{old.split('.')[0]}.{match.group(2).lower()}"
            if old not in self.db.tables:
                raise server_error(15225, f"No item by the name of '{old}' could be found in the current database.")
            if new in self.db.tables:
                raise server_error(15335, f"Error: The new name '{match.group(2)}' is already in use as a object name.")
            self.db.tables[new] = self.db.tables.pop(old)
            return [], []
        match = re.match(
            r"^DELETE FROM " + _NAME + r" WHERE \[endpoint\] IS NOT NULL; INSERT INTO " + _NAME + r" \(([^)]*)\) "
            + re.escape(_CONVERTED)
            + " FROM "
            + _NAME
            + re.escape(" GROUP BY [endpoint], [request_id], [slot], [version], [status], [pinned];")
            + "$",
            flat,
        )
        if match is None or match.group(1) != match.group(2):
            raise server_error(102, f"Incorrect syntax near '{flat[:40]}' (the fake does not know this batch).")
        calls, earlier = self._table(match.group(1)), self._table(match.group(4))
        known = {c for c, _ in calls.columns}
        for column in re.findall(r"\[(\w+)\]", match.group(3)):
            if column not in known:
                raise server_error(207, f"Invalid column name '{column}'.")
        calls.rows.clear()
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in earlier.rows:
            group = tuple(row[c] for c in ("endpoint", "request_id", "slot", "version", "status", "pinned"))
            groups.setdefault(group, []).append(row)
        for (endpoint, request_id, slot, version, status, pinned), rows in groups.items():
            keys = [r["row_key"] for r in rows]
            escaped = [k.replace("\\", "\\\\").replace('"', '\\"') for k in keys if k is not None]
            latencies = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
            calls.rows.append(
                {
                    "endpoint": endpoint,
                    "t": min(r["t"] for r in rows),
                    "request_id": request_id,
                    "slot": slot,
                    "version": version,
                    "status": status,
                    "row_count": len(rows),
                    "latency_ms": sum(latencies) / len(latencies) if latencies else None,
                    "row_keys": "[" + ",".join(f'"{k}"' for k in escaped) + "]" if len(escaped) == len(keys) else None,
                    "pinned": pinned,
                    "message": None,
                }
            )
        return [], []

    # -- the pool's DMVs ---------------------------------------------------------------------------
    def _dmv(self, conn: FakePoolConnection, flat: str, params: tuple) -> tuple[list, list]:
        """predict_tsql.failed_requests over sys.dm_pdw_exec_requests and sys.dm_pdw_errors, holding
        the query to the views' documented columns and to VIEW DATABASE STATE."""
        if not self.may_view_state:
            raise server_error(300, "VIEW DATABASE STATE permission denied in database 'scoring'.")
        match = re.match(
            r"^SELECT TOP \((\d+)\) (.+?) FROM sys\.dm_pdw_exec_requests AS r "
            r"LEFT JOIN sys\.dm_pdw_errors AS e ON e\.\[(\w+)\] = r\.\[(\w+)\] "
            r"WHERE r\.\[status\] = N'Failed' AND r\.\[session_id\] <> SESSION_ID\(\) "
            r"AND \(r\.\[label\] = \? OR r\.\[command\] LIKE \?\) ORDER BY r\.\[submit_time\] DESC;$",
            flat,
        )
        if match is None:
            raise server_error(
                102, f"Incorrect syntax near '{flat[:40]}' (the fake does not know this query)."
            )
        for alias, column in re.findall(r"\b([re])\.\[(\w+)\]", flat):
            if column not in (REQUEST_COLUMNS if alias == "r" else ERROR_COLUMNS):
                raise server_error(207, f"Invalid column name '{column}'.")
        label, pattern = params
        like = _like(pattern)
        found = [
            r
            for r in self.requests
            if r["status"] == "Failed"
            and r["session_id"] != conn.session_id
            and (r["label"] == label or like.match(r["command"] or ""))
        ]
        found.sort(key=lambda r: r["submit_time"], reverse=True)
        columns = [c.strip() for c in match.group(2).split(",")]
        rows = []
        for request in found:
            errors = [e for e in self.errors if e["request_id"] == request["request_id"]] or [{}]
            for error in errors:
                rows.append(
                    tuple(
                        (request if alias == "r" else error).get(column)
                        for alias, column in (re.match(r"([re])\.\[(\w+)\]", c).groups() for c in columns)
                    )
                )
        return [re.sub(r"^\w\.\[|\]$", "", c) for c in columns], rows[: int(match.group(1))]

    def predict(self, payload: bytes, data: Table, outputs: list[tuple[str, str]]) -> list[list[Any]]:
        """PREDICT(MODEL = payload, DATA = data AS d, RUNTIME = ONNX) WITH (outputs): d.*, p.*."""
        import onnxruntime

        self.predict_calls += 1
        try:
            session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise server_error(
                50000, f"PREDICT: the model could not be loaded by the ONNX runtime: {exc}"
            ) from None
        types = {name: sql_type for name, sql_type in data.columns}
        feeds = {}
        for declared in session.get_inputs():
            if declared.name not in types:
                raise server_error(
                    50000, f"PREDICT: model input '{declared.name}' has no column of that name in DATA."
                )
            sql_type = types[declared.name]
            if _TENSOR.get(_base(sql_type)) != declared.type:
                raise server_error(
                    50000,
                    f"PREDICT: column '{declared.name}' ({sql_type}) does not match the "
                    f"model input type {declared.type}.",
                )
            shape = declared.shape
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise server_error(
                    50000,
                    f"PREDICT: model input '{declared.name}' has shape {shape}; "
                    "each input must be one column.",
                )
            values = [row[declared.name] for row in data.rows]
            kind = _base(sql_type)
            array = (
                np.array(values, dtype=object)
                if _NUMPY.get(kind) is None
                else np.array(values, dtype=_NUMPY[kind])
            )
            feeds[declared.name] = array.reshape(-1, 1) if len(shape) == 2 else array
        given = {o.name for o in session.get_outputs()}
        for name, _ in outputs:
            if name not in given:
                raise server_error(50000, f"PREDICT: WITH column '{name}' is not an output of the model.")
        results = session.run([name for name, _ in outputs], feeds) if data.rows else [[] for _ in outputs]
        columns = [
            [_cast(v, sql_type, name) for v in np.asarray(r).reshape(-1)]
            for (name, sql_type), r in zip(outputs, results, strict=True)
        ]
        answers = []
        for index, row in enumerate(data.rows):
            answers.append([row[c] for c, _ in data.columns] + [column[index] for column in columns])
        return answers


def _cast(value: Any, sql_type: str, name: str) -> Any:
    """CAST to a SQL type, as plain Python values (real: float32 precision)."""
    kind = _base(sql_type)
    if value is None:
        return None
    try:
        if kind in ("char", "varchar", "nvarchar"):
            text = value.decode() if isinstance(value, bytes) else str(value)
            size = re.findall(r"\((\w+)\)", sql_type)
            if size and size[0] != "max" and len(text) > int(size[0]):
                raise server_error(2628, f"String or binary data would be truncated in column '{name}'.")
            return text
        if kind in ("int", "bigint"):
            number = int(value)
            limit = 2**31 if kind == "int" else 2**63
            if not -limit <= number < limit:
                raise server_error(
                    8115, f"Arithmetic overflow error converting expression to data type {kind}."
                )
            return number
        if kind == "real":
            return float(np.float32(value))
        return float(value)
    except (TypeError, ValueError):
        raise server_error(8114, f"Error converting data type to {sql_type}.") from None


#: sql_migrate.convert's SELECT: the earlier rows grouped by call and slot
_CONVERTED = (
    "SELECT [endpoint], MIN([t]), [request_id], [slot], [version], [status], COUNT(*), AVG([latency_ms]), "
    r"""CASE WHEN COUNT([row_key]) = COUNT(*) THEN N'[' + STRING_AGG(CAST(N'"' + REPLACE(REPLACE([row_key], """
    r"""N'\', N'\\'), N'"', N'\"') + N'"' AS nvarchar(max)), N',') + N']' END, [pinned], """
    "CAST(NULL AS nvarchar(2000))"
)


def _like(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (``%``, ``_``, one character in brackets) as a regular expression."""
    return re.compile(
        "^"
        + "".join(
            ".*"
            if p == "%"
            else "."
            if p == "_"
            else re.escape(p[1:-1])
            if p.startswith("[")
            else re.escape(p)
            for p in re.findall(r"\[[^\]]\]|%|_|[^%_\[]+", pattern)
        )
        + "$",
        re.S | re.I,
    )


def _without_literals(sql: str) -> str:
    return re.sub(r"N?'(?:[^']|'')*'", "''", sql)


# -- the key hash, as the procedure's T-SQL writes it ---------------------------------------------
_BUCKET = re.compile(
    r"CAST\(SUBSTRING\(HASHBYTES\(''SHA2_256'', r\.\[salt\] \+ N''\|'' \+ (.+?)\), 1, 4\) AS bigint\) "
    r"\* 100 / CAST\(4294967296 AS bigint\) BETWEEN r\.\[low\] AND r\.\[high\] - 1"
)
_KEY_PARTS = {
    "convert": re.compile(r"^ISNULL\(CONVERT\(nvarchar\((\d+)\), s\.\[(\w+)\]\), N''''\)$"),
    "float_style_2": re.compile(
        r"^ISNULL\(CONVERT\(nvarchar\((\d+)\), CAST\(s\.\[(\w+)\] AS float\), 2\), N''''\)$"
    ),
    "cast": re.compile(r"^ISNULL\(CAST\(s\.\[(\w+)\] AS nvarchar\((\d+)\)\), N''''\)$"),
}


def _bucket_function(flat: str, types: dict[str, str]) -> Any:
    """The procedure's bucket expression as a function (row, salt) -> bucket: the key parts it
    concatenates, converted as the pool converts, hashed with SHA2_256 over the UTF-16 text
    (nvarchar), the first 4 bytes as a number times 100 over 2^32."""
    match = _BUCKET.search(flat)
    if match is None:
        raise server_error(102, "the fake does not know this routing expression")
    parts = [_key_part(text, types) for text in match.group(1).split(" + N''|'' + ")]

    def bucket(row: dict[str, Any], salt: str) -> int:
        key = "|".join(part(row) for part in parts)
        digest = hashlib.sha256((salt + "|" + key).encode("utf-16-le")).digest()
        return int.from_bytes(digest[:4], "big") * 100 // 4294967296

    return bucket


#: predict_tsql.keys_expression around a key part, as the dynamic text holds it (quotes doubled)
_KEYS_BEFORE = "N''['' + STRING_AGG(CAST(N''\"'' + REPLACE(REPLACE("
_KEYS_AFTER = ", N''\\'', N''\\\\''), N''\"'', N''\\\"'') + N''\"'' AS nvarchar(max)), N'','') + N'']''"


def _keys_function(text: str, types: dict[str, str]) -> Any:
    """The request log's keys expression (predict_tsql.keys_expression) as a function rows ->
    its text: NULL, or the JSON list STRING_AGG builds of the escaped key texts."""
    if text == "CAST(NULL AS nvarchar(max))":
        return lambda rows: None
    if not (text.startswith(_KEYS_BEFORE) and text.endswith(_KEYS_AFTER)):
        raise server_error(102, f"the fake does not know the keys expression {text!r}")
    part = _key_part(text[len(_KEYS_BEFORE) : -len(_KEYS_AFTER)], types)

    def keys(rows: list[dict[str, Any]]) -> str:
        escaped = (part(row).replace("\\", "\\\\").replace('"', '\\"') for row in rows)
        return "[" + ",".join(f'"{k}"' for k in escaped) + "]"

    return keys


def _key_part(text: str, types: dict[str, str]) -> Any:
    """One key part of the procedure's T-SQL as a function row -> text."""
    for kind, pattern in _KEY_PARTS.items():
        found = pattern.match(text)
        if found:
            column = found.group(1) if kind == "cast" else found.group(2)
            if column not in types:
                raise server_error(207, f"Invalid column name '{column}'.")
            return lambda row: _converted(kind, row[column], types[column])
    raise server_error(102, f"the fake does not know the key part {text!r}")


def _converted(kind: str, value: Any, sql_type: str) -> str:
    """CONVERT / CAST to nvarchar as the pool does it; NULL as '' (the ISNULL around it)."""
    if value is None:
        return ""
    if kind == "float_style_2":  # style 2: 16 significant digits, scientific, 3 exponent digits
        mantissa, exponent = f"{float(value):.15e}".split("e")
        return f"{mantissa}e{exponent[0]}{int(exponent[1:]):03d}"
    if _base(sql_type) in ("real", "float"):  # style 0: at most 6 significant digits
        text = f"{float(value):.6g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{exponent[0]}{int(exponent[1:]):03d}"
        return text
    return str(value)


# -- the DB-API surface ---------------------------------------------------------------------------
class FakePoolConnection:
    """autocommit off by default (as drivers open); the first statement then opens a transaction."""

    def __init__(self, pool: FakeSqlPool):
        self.pool = pool
        self.autocommit = False
        self.closed = False
        self.snapshot: Database | None = None
        self.aborted = False
        self.temp: dict[str, Table] = {}
        pool._sessions += 1
        self.session_id = f"SID{pool._sessions}"

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise InterfaceError(
                driver_error="Cannot create cursor on closed connection",
                ddbc_error="Cannot create cursor on closed connection",
            )
        return FakeCursor(self)

    def run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple]]:
        return self.pool.run(self, sql, params)

    def begin(self) -> None:
        self.snapshot = copy.deepcopy(self.pool.db)
        self.aborted = False

    def commit(self) -> None:
        if self.aborted:
            raise server_error(
                3930,
                "The current transaction cannot be committed and cannot support operations "
                "that write to the log file. Roll back the transaction.",
                state="25000",
            )
        self.snapshot = None

    def rollback(self) -> None:
        if self.snapshot is not None:
            self.pool.db = self.snapshot
        self.snapshot = None
        self.aborted = False

    def close(self) -> None:
        self.rollback()  # uncommitted work is discarded when the session ends
        self.closed = True
