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
- PREDICT (``RUNTIME = ONNX``, run here with onnxruntime): the model is the active row's
  payload (a scalar subquery: more than one row fails with Msg 512); each model input is fed
  from the DATA column of the same name, which must exist and have the SQL type of the input's
  tensor type, one column per input ([N] or [N, 1]); every WITH column names a model output; the
  result is the DATA columns (d.*), the WITH columns converted to their types, and what else the
  procedure selects (the version).
Where the documentation gives a rule but not the server's wording, the message is the fake's own.

Failure injection: ``fail_on = N`` fails the Nth statement from now on (1 = the next one);
``fail_matching = "regex"`` fails the first statement that matches.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import threading
from typing import Any

import numpy as np
from sqlserver_fake import DatabaseError, Error, OperationalError, ProgrammingError, server_error

_NAME = r"((?:\[(?:[^\]]|\]\])*\]|#?\w+)(?:\s*\.\s*(?:\[(?:[^\]]|\]\])*\]|\w+))?)"
_DDL = re.compile(r"\b(CREATE|ALTER|DROP)\s+(TABLE|PROC|PROCEDURE)\b", re.I)
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


@dataclasses.dataclass
class Database:
    tables: dict[str, Table] = dataclasses.field(default_factory=dict)
    procedures: dict[str, str] = dataclasses.field(default_factory=dict)


class FakeSqlPool:
    def __init__(self) -> None:
        self.db = Database()
        self.fail_on: int | None = None
        self.fail_matching: str | None = None
        self.statements: list[str] = []
        self.executed_params: list[tuple[Any, ...]] = []
        self.predict_calls = 0
        self._lock = threading.RLock()
        self._clock = 0  # created_at order

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
            self.statements.append(sql)
            self.executed_params.append(params)
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
                if (
                    conn.snapshot is not None
                    and _DDL.search(_without_literals(flat))
                    and "#TDSP" not in upper
                ):
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
            r"^DELETE FROM " + _NAME + r" WHERE \[endpoint\] = \?( AND \[version\] = \?)?;$", flat, re.I
        )
        if match:
            table = self._table(match.group(1))
            keep = (
                (lambda r: r["endpoint"] != params[0] or r["version"] != params[1])
                if match.group(2)
                else (lambda r: r["endpoint"] != params[0])
            )
            table.rows[:] = [r for r in table.rows if keep(r)]
            return [], []
        match = re.match(
            r"^SELECT (.+?) FROM "
            + _NAME
            + r" WHERE \[endpoint\] = \? ORDER BY \[created_at\], \[version\];$",
            flat,
            re.I,
        )
        if match:
            table = self._table(match.group(2))
            columns = [c.strip(" []") for c in match.group(1).split(",")]
            rows = sorted(
                (r for r in table.rows if r["endpoint"] == params[0]),
                key=lambda r: (r["created_at"], r["version"]),
            )
            return columns, [tuple(r[c] for c in columns) for r in rows]
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

    def _declared(self, flat: str, upper: str, params: tuple) -> tuple[list, list]:
        declared = re.findall(r"@(\w+) [\w()]+ = \?", flat)
        if len(declared) != len(params):
            raise server_error(137, "Must declare the scalar variable.")
        variables = dict(zip(declared, params, strict=True))
        table = self._table(re.search(r"(?:INSERT INTO|UPDATE) " + _NAME, flat, re.I).group(1))
        endpoint, version = variables["endpoint"], variables["version"]
        same = [r for r in table.rows if r["endpoint"] == endpoint and r["version"] == version]
        if "INSERT INTO" in upper:
            if same and same[0]["sha256"] != variables["sha256"]:
                raise server_error(
                    50001,
                    "this model version is already stored with other content; give the model a new version",
                )
            if not same:
                self._clock += 1
                table.rows.append(
                    {**variables, "created_at": self._clock, "created_by": "deployer", "active": 0}
                )
            return [], []
        if not same:
            raise server_error(50002, "this model version is not in the model table; insert it first")
        for row in table.rows:
            if row["endpoint"] == endpoint:
                row["active"] = 1 if row["version"] == version else 0
        return [], []

    # -- scoring --------------------------------------------------------------------------------
    def _scoring_batch(self, conn: FakePoolConnection, flat: str, params: tuple) -> tuple[list, list]:
        create = re.search(
            r"CREATE TABLE #tdsp_input \((.*?)\) WITH \(DISTRIBUTION = ROUND_ROBIN, HEAP\);", flat
        )
        if create is None:
            raise server_error(102, "Incorrect syntax near 'CREATE'.")
        columns = [(m.group(1), m.group(2)) for m in re.finditer(r"\[(\w+)\] ([\w()]+)", create.group(1))]
        rows: list[dict[str, Any]] = []
        selects = re.findall(r"SELECT ((?:CAST\(\? AS [\w()]+\)(?:, )?)+)", flat)
        width = len(columns)
        if len(params) != width * len(selects):
            raise server_error(8178, "The parameterized query expects another number of parameters")
        for index in range(len(selects)):
            values = params[index * width : (index + 1) * width]
            rows.append(
                {name: _cast(v, sql_type, name) for (name, sql_type), v in zip(columns, values, strict=True)}
            )
        conn.temp["#tdsp_input"] = Table(columns, rows)
        try:
            match = re.search(r"EXEC " + _NAME + r" @input_table = N'([^']*)';", flat)
            if match is None:
                raise server_error(102, "Incorrect syntax near 'EXEC'.")
            return self._exec(conn, _name(match.group(1)), match.group(2))
        finally:
            conn.temp.pop("#tdsp_input", None)

    def _exec(self, conn: FakePoolConnection, name: str, input_table: str) -> tuple[list, list]:
        if name not in self.db.procedures:
            raise server_error(2812, f"Could not find stored procedure '{name}'.")
        definition = self.db.procedures[name]
        flat = " ".join(definition.split())
        if "PREDICT(" not in flat:  # the stub
            return ["stub"], [(1,)]
        model_table, key = re.search(
            r"IF NOT EXISTS \(SELECT 1 FROM "
            + _NAME
            + r" WHERE \[endpoint\] = N'(\w+)' AND \[active\] = 1\)",
            flat,
        ).groups()
        active = [r for r in self._table(model_table).rows if r["endpoint"] == key and r["active"]]
        if not active:
            raise server_error(50003, "no active model version for this procedure; push the model first")
        if len(active) > 1:
            raise server_error(512, "Subquery returned more than 1 value.")
        parts = input_table.split(".")
        if len(parts) > 2 or not parts[-1]:
            raise server_error(50004, "@input_table must name a table or view: [schema.]name or #temp")
        data = (
            conn.temp.get(input_table)
            if input_table.startswith("#")
            else self.db.tables.get(_name(input_table))
        )
        if data is None:
            raise server_error(208, f"Invalid object name '{input_table}'.")
        query = re.search(r"DECLARE @query nvarchar\(max\) = N'(.*?)' \+ @source \+ N'(.*?)';", flat).group(2)
        query = query.replace("''", "'")
        outputs = [
            (m.group(1), m.group(2))
            for m in re.finditer(r"\[(\w+)\] ([\w()]+)", re.search(r"WITH \((.*?)\) AS p", query).group(1))
        ]
        scored = self.predict(active[0]["payload"], data, outputs)
        names = [c for c, _ in data.columns] + [c for c, _ in outputs] + ["model_version"]
        return names, [tuple(row) + (active[0]["version"],) for row in scored]

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


def _without_literals(sql: str) -> str:
    return re.sub(r"N?'(?:[^']|'')*'", "''", sql)


# -- the DB-API surface ---------------------------------------------------------------------------
class FakeCursor:
    def __init__(self, connection: FakePoolConnection):
        self._connection = connection
        self.description: list[tuple] | None = None
        self._rows: list[tuple] = []

    def execute(self, sql: str, params: tuple | list = ()) -> FakeCursor:
        if self._connection.closed:
            raise Error("Cannot execute on a closed connection")
        columns, rows = self._connection.pool.run(self._connection, sql, tuple(params))
        self.description = [(c, None, None, None, None, None, None) for c in columns] if columns else None
        self._rows = rows
        return self

    def fetchall(self) -> list[tuple]:
        rows, self._rows = self._rows, []
        return rows

    def nextset(self) -> bool:
        return False

    def close(self) -> None:
        pass


class FakePoolConnection:
    """autocommit off by default (as drivers open); the first statement then opens a transaction."""

    def __init__(self, pool: FakeSqlPool):
        self.pool = pool
        self.autocommit = False
        self.closed = False
        self.snapshot: Database | None = None
        self.aborted = False
        self.temp: dict[str, Table] = {}

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise Error("Cannot create cursor on closed connection")
        return FakeCursor(self)

    def begin(self) -> None:
        self.snapshot = copy.deepcopy(self.pool.db)
        self.aborted = False

    def commit(self) -> None:
        if self.aborted:
            raise ProgrammingError("42000", "The transaction has aborted; roll it back")
        self.snapshot = None

    def rollback(self) -> None:
        if self.snapshot is not None:
            self.pool.db = self.snapshot
        self.snapshot = None
        self.aborted = False

    def close(self) -> None:
        self.rollback()  # uncommitted work is discarded when the session ends
        self.closed = True
