"""A fake SQL Server behind a DB-API connection, enforcing what the server would.

``FakeSqlServer`` holds the database (tables with rows, procedures with their definitions,
the instance's configuration); ``connect()`` gives a DB-API connection to it (autocommit off,
``cursor().execute(sql, params)``, ``fetchall``, ``commit``, ``rollback``) that
``SqlServerConnection`` wraps exactly as it wraps mssql-python's.

What it enforces, as the server does:
- a transaction starts with the first statement after a commit or rollback; ``rollback``
  restores the database as it was (tables, rows, procedures created since vanish);
- INSERT into a missing table, a duplicate (name, version), EXEC of a missing procedure
  and a statement it does not understand all fail with the server's message and number;
- ``external scripts enabled`` can be off (sp_execute_external_script then fails with 39023),
  EXECUTE ANY EXTERNAL SCRIPT can be missing (EXEC fails with 229), the server's Python
  libraries are configurable;
- EXEC of a scoring procedure runs the Python script stored in its definition through
  tests/sqlserver_harness.run_external_script, with the active model row's payload bound as
  ``model_bytes``, and returns its result set (a script error comes back as Msg 39004).

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
import pandas as pd
from sqlserver_harness import ExternalScriptError, run_external_script


# -- DB-API 2.0 exceptions (PEP 249 names: the seam recognizes drivers by them) ---------------
class Error(Exception):
    pass


class DatabaseError(Error):
    pass


class ProgrammingError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


def server_error(
    number: int, message: str, cls: type[DatabaseError] = ProgrammingError, state: str = "42000"
) -> DatabaseError:
    """An exception worded the way the ODBC driver words SQL Server's messages."""
    return cls(state, f"[{state}] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{message} ({number})")


@dataclasses.dataclass
class Database:
    tables: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    procedures: dict[str, str] = dataclasses.field(default_factory=dict)
    #: procedure -> the model name in its extended property tdsp_model_name
    bindings: dict[str, str] = dataclasses.field(default_factory=dict)


def _name(text: str) -> str:
    """A one- or two-part name without brackets, lower case (the default collation ignores case)."""
    parts = [
        p.strip().strip("[]").replace("]]", "]") for p in re.findall(r"\[(?:[^\]]|\]\])*\]|[^.\s\[\]]+", text)
    ]
    if len(parts) == 1:
        parts = ["dbo", *parts]
    return ".".join(parts).lower()


_NAME = r"((?:\[(?:[^\]]|\]\])*\]|\w+)(?:\s*\.\s*(?:\[(?:[^\]]|\]\])*\]|\w+))?)"


class FakeSqlServer:
    def __init__(
        self,
        *,
        scripts_enabled: bool = True,
        may_run_scripts: bool = True,
        libraries: dict[str, str] | None = None,
        python: str = "3.11.9",
    ):
        self.db = Database()
        self.scripts_enabled = scripts_enabled
        self.may_run_scripts = may_run_scripts
        self.python = python
        self.libraries = dict(libraries or {})
        self.fail_on: int | None = None
        self.fail_matching: str | None = None
        self.statements: list[str] = []  # every statement run, for assertions
        self.executed_params: list[tuple[Any, ...]] = []
        self.commits = 0
        self._lock = threading.RLock()
        self._counter = 0  # created_at order of inserted rows

    def connect(self) -> FakeConnection:
        return FakeConnection(self)

    def state(self) -> Database:
        """A copy of what is committed and in flight (compare before/after)."""
        return copy.deepcopy(self.db)

    # -- running a statement ------------------------------------------------------------
    def run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            self.statements.append(sql)
            self.executed_params.append(params)
            if self.fail_on is not None:
                self.fail_on -= 1
                if self.fail_on == 0:
                    self.fail_on = None
                    raise server_error(50000, "injected failure", OperationalError, "HY000")
            if self.fail_matching is not None and re.search(self.fail_matching, sql, re.I | re.S):
                self.fail_matching = None
                raise server_error(50000, "injected failure", OperationalError, "HY000")
            markers = _without_literals(sql).count("?")
            if markers != len(params):
                raise server_error(
                    8178, f"The parameterized query expects {markers} parameter(s), {len(params)} supplied"
                )
            return self._dispatch(sql, params)

    def _dispatch(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        text = re.sub(r"--[^\n]*", "", sql) if "CREATE" not in sql.upper()[:200] else sql
        flat = " ".join(text.split())
        upper = flat.upper()
        create = re.match(
            r"^(?:SET \w+ ON;\s*)*CREATE\s+(?:OR\s+ALTER\s+)?PROC(?:EDURE)?\s+" + _NAME, flat, re.I
        )
        if create:
            return self._create_procedure(_name(create.group(1)), sql)
        if "CREATE PROCEDURE" in upper or "ALTER PROCEDURE" in upper:
            raise server_error(111, "'CREATE/ALTER PROCEDURE' must be the first statement in a query batch.")
        if "SP_ADDEXTENDEDPROPERTY" in upper:
            return self._bind(flat, params)
        if upper.startswith("DECLARE") and ("INSERT INTO" in upper or "UPDATE" in upper):
            names = re.findall(r"@(\w+)\s+[\w()]+\s*=\s*\?", flat)
            if len(names) != len(params):
                raise server_error(137, "Must declare the scalar variable.")
            variables = dict(zip(names, params, strict=True))
            table = re.search(r"(?:INSERT INTO|UPDATE)\s+" + _NAME, flat, re.I)
            assert table is not None
            if "INSERT INTO" in upper:
                return self._insert(_name(table.group(1)), variables)
            return self._activate(_name(table.group(1)), variables)
        if "SELECT * INTO #TDSP_INPUT" in upper:
            return self._score_batch(flat, params)
        if "SP_EXECUTE_EXTERNAL_SCRIPT" in upper:
            return self._probe_python(params)
        if "EXTERNAL SCRIPTS ENABLED" in upper:
            return ["value_in_use"], [(1 if self.scripts_enabled else 0,)]
        if "EXECUTE ANY EXTERNAL SCRIPT" in upper:
            return ["allowed"], [(1 if self.may_run_scripts else 0,)]
        match = re.match(r"^SELECT OBJECT_ID\(\?, N?'(U|P)'\)$", flat, re.I)
        if match:
            kind = match.group(1).upper()
            found = _name(params[0]) in (self.db.tables if kind == "U" else self.db.procedures)
            return [""], [(1 if found else None,)]
        match = re.search(r"CREATE TABLE\s+" + _NAME, flat, re.I)
        if match:
            table = _name(match.group(1))
            conditional = "IF OBJECT_ID" in upper or "IF NOT EXISTS" in upper
            if table in self.db.tables and not conditional:
                raise server_error(2714, f"There is already an object named '{table}' in the database.")
            self.db.tables.setdefault(table, [])
            return [], []
        match = re.match(r"^SELECT (.+?) FROM\s+" + _NAME + r" WHERE \[?name\]? = \?", flat, re.I)
        if match:
            table = self._table(_name(match.group(2)))
            columns = [c.strip(" []") for c in match.group(1).split(",")]
            rows = sorted((r for r in table if r["name"] == params[0]), key=lambda r: r["created_at"])
            return columns, [tuple(r.get(c) for c in columns) for r in rows]
        match = re.match(r"^DROP PROCEDURE (IF EXISTS )?" + _NAME + r";?$", flat, re.I)
        if match:
            procedure = _name(match.group(2))
            if procedure not in self.db.procedures and not match.group(1):
                raise server_error(
                    3701, f"Cannot drop the procedure '{procedure}', because it does not exist."
                )
            self.db.procedures.pop(procedure, None)
            self.db.bindings.pop(procedure, None)  # a dropped object's properties go with it
            return [], []
        match = re.match(r"^DELETE FROM\s+" + _NAME + r" WHERE \[?name\]? = \?;?$", flat, re.I)
        if match:
            table = self._table(_name(match.group(1)))
            table[:] = [r for r in table if r["name"] != params[0]]
            return [], []
        match = re.match(r"^EXEC(?:UTE)?\s+" + _NAME, flat, re.I)
        if match:
            return self._exec(_name(match.group(1)), None)
        raise server_error(102, f"the fake does not understand: {flat[:200]}")

    def _table(self, name: str) -> list[dict[str, Any]]:
        if name not in self.db.tables:
            raise server_error(208, f"Invalid object name '{name}'.")
        return self.db.tables[name]

    def _insert(self, table_name: str, variables: dict[str, Any]) -> tuple[list[str], list]:
        """insert_model: THROW 50001 for a stored version with other content; else insert once."""
        table = self._table(table_name)
        same = [r for r in table if r["name"] == variables["name"] and r["version"] == variables["version"]]
        if same and same[0]["sha256"] != variables["sha256"]:
            raise server_error(
                50001, "this model version is already stored with other content; give the model a new version"
            )
        if not same:
            self._counter += 1
            table.append({**variables, "active": 0, "created_at": self._counter})
        return [], []

    def _activate(self, table_name: str, variables: dict[str, Any]) -> tuple[list[str], list]:
        table = self._table(table_name)
        name, version = variables["name"], variables["version"]
        if not any(r["name"] == name and r["version"] == version for r in table):
            raise server_error(50002, "this model version is not in the model table; insert it first")
        for row in table:
            if row["name"] == name:
                row["active"] = 1 if row["version"] == version else 0
        return [], []

    def _bind(self, flat: str, params: tuple[Any, ...]) -> tuple[list[str], list]:
        schema = re.search(r"@level0name = N'(\w+)'", flat)
        procedures = sorted(set(re.findall(r"@level1name = N'(\w+)'", flat)))
        assert schema is not None and len(params) == 1
        for procedure in procedures:
            key = f"{schema.group(1)}.{procedure}".lower()
            if key not in self.db.procedures:
                raise server_error(
                    15135,
                    f"Object is invalid. Extended properties are not permitted on '{key}', "
                    "or the object does not exist.",
                )
            self.db.bindings[key] = params[0]
        return [], []

    def _create_procedure(self, name: str, sql: str) -> tuple[list[str], list]:
        if "CREATE PROCEDURE" in sql.upper().split("AS", 1)[0] and name in self.db.procedures:
            raise server_error(2714, f"There is already an object named '{name}' in the database.")
        self.db.procedures[name] = sql
        return [], []

    def _probe_python(self, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        if not self.scripts_enabled:
            raise _disabled()
        if not self.may_run_scripts:
            raise _denied()
        asked = [n.strip() for n in str(params[0] if params else "").split(",") if n.strip()]
        rows = [("python", self.python), *[(n, self.libraries.get(n)) for n in asked]]
        return ["name", "version"], rows

    # -- scoring -----------------------------------------------------------------------------
    def _score_batch(self, flat: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        match = re.search(r"FROM \(VALUES (.*)\) AS v\(([^)]*)\)( WHERE 1 = 0)?;", flat)
        if match is None:
            raise server_error(102, "Incorrect syntax near 'VALUES'.")
        columns = [c.strip(" []") for c in match.group(2).split(",")]
        if match.group(3):
            frame = pd.DataFrame({c: pd.Series([], dtype="float64") for c in columns})
        else:
            width = len(columns)
            if len(params) % width:
                raise server_error(
                    10709, "The number of columns for each row in a table value constructor must be the same."
                )
            data = [list(params[i : i + width]) for i in range(0, len(params), width)]
            frame = pd.DataFrame(data, columns=columns)
        proc = re.search(r"EXEC(?:UTE)?\s+" + _NAME + r"\s+@input_query", flat, re.I)
        if proc is None:
            raise server_error(102, "Incorrect syntax near 'EXEC'.")
        return self._exec(_name(proc.group(1)), frame)

    def _exec(self, name: str, frame: pd.DataFrame | None) -> tuple[list[str], list[tuple[Any, ...]]]:
        if name not in self.db.procedures:
            raise server_error(2812, f"Could not find stored procedure '{name}'.")
        if not self.scripts_enabled:
            raise _disabled()
        if not self.may_run_scripts:
            raise _denied()
        definition = self.db.procedures[name]
        script = _script_of(definition)
        model = self._active_model(name)
        params = {"model_bytes": model.get("payload"), "model_version": model.get("version")}
        try:
            result = run_external_script(script, frame, params, result_sets=_result_sets(definition))
        except ExternalScriptError as exc:
            raise server_error(exc.number, str(exc).split("\n", 1)[-1]) from None
        rows = [tuple(_plain(v) for v in row) for row in result.itertuples(index=False, name=None)]
        return list(result.columns), rows

    def _active_model(self, procedure: str) -> dict[str, Any]:
        """What the procedure's preamble selects: the active row of the model named by its
        extended property; THROW 50003 when there is none."""
        model_name = self.db.bindings.get(procedure)
        for rows in self.db.tables.values():
            active = [r for r in rows if r.get("active") and r["name"] == model_name]
            if active:
                return active[0]
        raise server_error(50003, "no active model version for this procedure; push the model first")


def _disabled() -> DatabaseError:
    return server_error(
        39023,
        "'sp_execute_external_script' is disabled on this instance of SQL Server. "
        "Use sp_configure 'external scripts enabled' [1] to enable it.",
    )


def _denied() -> DatabaseError:
    return server_error(229, "The EXECUTE permission was denied on the object 'sp_execute_external_script'.")


def _literals(sql: str) -> list[str]:
    """The N'...' string literals of a T-SQL text, unescaped."""
    return [m.replace("''", "'") for m in re.findall(r"N'((?:[^']|'')*)'", sql, re.S)]


def _script_of(definition: str) -> str:
    scripts = [s for s in _literals(definition) if "OutputDataSet" in s]
    if not scripts:
        raise server_error(39004, "A 'Python' script error occurred: the procedure holds no script")
    return max(scripts, key=len)


def _result_sets(definition: str) -> list[tuple[str, str]] | None:
    """The WITH RESULT SETS columns as (name, type)."""
    start = definition.upper().find("WITH RESULT SETS")
    if start < 0:
        return None
    text = definition[start + len("WITH RESULT SETS") :].lstrip()
    depth, end = 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char == ")":
            end = index
            break
    inner = text[2 : end - 1]  # inside "((" ... "))"
    columns = []
    for part in re.split(r",(?![^()]*\))", inner):
        words = part.split()
        if len(words) >= 2:
            columns.append((words[0].strip("[]"), words[1]))
    return columns


def _without_literals(sql: str) -> str:
    return re.sub(r"N?'(?:[^']|'')*'", "''", sql)


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA:
        return None
    return value


# -- the DB-API surface ---------------------------------------------------------------------------
class FakeCursor:
    def __init__(self, connection: FakeConnection):
        self._connection = connection
        self.description: list[tuple[Any, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> FakeCursor:
        if self._connection.closed:
            raise Error("Cannot execute on a closed connection")
        self._connection.begin()
        columns, rows = self._connection.server.run(sql, tuple(params))
        self.description = [(c, None, None, None, None, None, None) for c in columns] if columns else None
        self._rows = rows
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def nextset(self) -> bool:
        return False

    def close(self) -> None:
        pass


class FakeConnection:
    """Autocommit off: the first statement after commit/rollback opens a transaction."""

    def __init__(self, server: FakeSqlServer):
        self.server = server
        self.autocommit = False
        self.closed = False
        self._snapshot: Database | None = None

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise Error("Cannot create cursor on closed connection")
        return FakeCursor(self)

    def begin(self) -> None:
        if self._snapshot is None:
            self._snapshot = copy.deepcopy(self.server.db)

    def commit(self) -> None:
        self._snapshot = None
        self.server.commits += 1

    def rollback(self) -> None:
        if self._snapshot is not None:
            self.server.db = self._snapshot
            self._snapshot = None

    def close(self) -> None:
        self.rollback()  # uncommitted work is discarded when the connection closes
        self.closed = True
