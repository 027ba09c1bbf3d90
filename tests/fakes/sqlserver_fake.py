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
- the batches tsql.py tags (``-- tdsp-deploy: <name>``) are carried out as their T-SQL says,
  THROWs included: a slot for a version not stored (50002), weights for a slot that does not
  exist (50004) or that do not add up to 100 (50005), the CHECK on a weight;
- the tables' columns, as each CREATE TABLE (or the migration) made them: a batch that names
  a column the table lacks fails with 207, so a database made by an earlier version's DDL
  refuses the new key ``[endpoint]`` until ``migrate_tables`` has run (which it carries out as
  its T-SQL says: the column added and filled, ``[name]`` dropped from traffic and log);
- EXEC of a scoring procedure does what its T-SQL does: it finds its rows by the endpoint its
  text names (or, for a procedure an earlier version made, by the model name in its extended
  property ``tdsp_model_name``, on ``[name]``), the routes in the traffic table (the pinned ``@slot``, else
  the slots with a weight; none: THROW 50003), bundles their payloads, runs the Python script
  stored in its definition through tests/sqlserver_harness with ``model_bundle`` and ``routes``
  bound, returns its result set typed by WITH RESULT SETS (a script error outside the
  generated guard comes back as Msg 39004; a failure the script caught, in ``script_error``,
  as the procedure's THROW 50010) and inserts the script's ``request_log`` into the request
  log table.

Failure injection: ``fail_on = N`` fails the Nth statement from now on (1 = the next one);
``fail_matching = "regex"`` fails the first statement that matches.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

from tests.fakes.dbapi_fake import (  # noqa: F401 (the exceptions are this module's too: tests import them from here)
    DatabaseError,
    Error,
    FakeCursor,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    server_error,
)
from tests.fakes.sqlserver_harness import ExternalScriptError, run_external_script_with_outputs


@dataclasses.dataclass
class Database:
    tables: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    procedures: dict[str, str] = dataclasses.field(default_factory=dict)
    #: procedure -> the model name in its extended property tdsp_model_name
    bindings: dict[str, str] = dataclasses.field(default_factory=dict)
    #: table -> its columns, as CREATE TABLE (or ALTER TABLE) left them
    columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: table -> its NOT NULL columns, and those with a DEFAULT or an IDENTITY
    required: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    defaulted: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    identity: int = 0  # the last IDENTITY value handed out


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
        # application locks (sp_getapplock, session-owned): resource -> the session holding it
        self.app_locks: dict[str, Any] = {}
        self._app_lock_freed = threading.Condition(self._lock)
        self._session: Any = None
        self._last_time = datetime.datetime.min

    def connect(self) -> FakeConnection:
        return FakeConnection(self)

    def state(self) -> Database:
        """A copy of what is committed and in flight (compare before/after)."""
        return copy.deepcopy(self.db)

    # -- running a statement ------------------------------------------------------------
    def run(
        self, sql: str, params: tuple[Any, ...], session: Any = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            self._session = session
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
        tag = re.match(r"-- tdsp-deploy: (\w+)\n", sql)
        text = re.sub(r"--[^\n]*", "", sql) if "CREATE" not in sql.upper()[:200] or tag else sql
        flat = " ".join(text.split())
        upper = flat.upper()
        if tag and tag.group(1) in _TAGGED:
            variables = _declared(flat, params) if tag.group(1) not in _UNDECLARED else {}
            # every table tsql.py names is [schema].[table]; in order of first mention
            tables = list(dict.fromkeys(_name(t) for t in re.findall(r"\[\w+\]\.\[\w+\]", flat)))
            if tag.group(1).startswith("create_") and tables[0] not in self.db.tables:
                self._declare_columns(tables[0], text)
            return getattr(self, "_" + tag.group(1))(variables, tables)
        create = re.match(
            r"^(?:SET \w+ ON;\s*)*CREATE\s+(?:OR\s+ALTER\s+)?PROC(?:EDURE)?\s+" + _NAME, flat, re.I
        )
        if create:
            return self._create_procedure(_name(create.group(1)), sql)
        if "CREATE PROCEDURE" in upper or "ALTER PROCEDURE" in upper:
            raise server_error(111, "'CREATE/ALTER PROCEDURE' must be the first statement in a query batch.")
        if "SP_DROPEXTENDEDPROPERTY" in upper:
            return self._unbind(flat)
        if "SP_ADDEXTENDEDPROPERTY" in upper:
            return self._bind(flat, params)
        if tag:
            raise server_error(102, f"the fake does not know the batch {tag.group(1)}")
        if "SELECT * INTO #TDSP_INPUT" in upper:
            return self._score_batch(flat, params)
        if re.match(r"^SELECT OBJECT_DEFINITION\(OBJECT_ID\(\?\)\)$", flat, re.I):
            return [""], [(self.db.procedures.get(_name(params[0])),)]
        match = re.match(r"^SELECT OBJECT_ID\(\?, N?'(U|P)'\);?$", flat, re.I)
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
        match = re.match(
            r"^SELECT (?:TOP \((\?|\d+)\) )?(.+?) FROM\s+" + _NAME + r" WHERE (.+?)(?: ORDER BY (.+?))?;?$",
            flat,
            re.I,
        )
        if match:
            bound = match.group(1) == "?"
            top = params[0] if bound else match.group(1)
            table = self._table(_name(match.group(3)))
            columns = [c.strip(" []") for c in match.group(2).split(",")]
            named = re.findall(r"\[(\w+)\]", " ".join(filter(None, match.group(2, 4, 5))))
            self._has(_name(match.group(3)), *named)
            rows = _where(table, match.group(4), list(params[1:] if bound else params))
            rows = _ordered(rows, match.group(5))
            if top is not None:
                rows = rows[: int(top)]
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
        match = re.match(r"^DELETE FROM\s+" + _NAME + r" WHERE (.+?);?$", flat, re.I)
        if match:
            table = self._table(_name(match.group(1)))
            self._has(_name(match.group(1)), *re.findall(r"\[(\w+)\]", match.group(2)))
            doomed = {id(r) for r in _where(table, match.group(2), list(params))}
            table[:] = [r for r in table if id(r) not in doomed]
            return [], []
        match = re.match(r"^EXEC(?:UTE)?\s+" + _NAME + r"(.*?);?$", flat, re.I)
        if match:  # the single-row procedure: its arguments are bound parameters
            return self._exec(_name(match.group(1)), None, _declared(match.group(2), params))
        raise server_error(102, f"the fake does not understand: {flat[:200]}")

    def _declare_columns(self, table: str, text: str) -> None:
        """A CREATE TABLE's columns, which of them are NOT NULL, and which fill themselves."""
        lines = re.findall(r"^\s+\[(\w+)\] (\w[^\n]*)$", text, re.M)
        self.db.columns[table] = [name for name, _ in lines]
        self.db.required[table] = [n for n, rest in lines if "NOT NULL" in rest or "PRIMARY KEY" in rest]
        self.db.defaulted[table] = {n for n, rest in lines if re.search(r"\b(DEFAULT|IDENTITY)\b", rest)}

    def _table(self, name: str) -> list[dict[str, Any]]:
        if name not in self.db.tables:
            raise server_error(208, f"Invalid object name '{name}'.")
        return self.db.tables[name]

    def _has(self, table: str, *columns: str) -> None:
        """Msg 207 for a column the table lacks (tables the fake knows the columns of)."""
        known = self.db.columns.get(table)
        for column in columns:
            if known is not None and column not in known:
                raise server_error(207, f"Invalid column name '{column}'.")

    def _keyed(self, *tables: str) -> list[list[dict[str, Any]]]:
        """The tables a row batch names, each checked to have the key column [endpoint]."""
        for table in tables:
            self._table(table)
            self._has(table, "endpoint")
        return [self.db.tables[t] for t in tables]

    # -- the tagged batches of tsql.py, as their T-SQL says ---------------------------------
    def _create_model_table(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        self.db.tables.setdefault(tables[0], [])
        return [], []

    _create_traffic_table = _create_model_table
    _create_request_log_table = _create_model_table

    def _probe_configuration(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        return ["value_in_use"], [(1 if self.scripts_enabled else 0,)]

    def _probe_permission(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        return ["allowed"], [(1 if self.may_run_scripts else 0,)]

    def _probe_python(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        if not self.scripts_enabled:
            raise _disabled()
        if not self.may_run_scripts:
            raise _denied()
        asked = [n.strip() for n in str(variables.get("libraries") or "").split(",") if n.strip()]
        rows = [("python", self.python), *[(n, self.libraries.get(n)) for n in asked]]
        return ["name", "version"], rows

    def _insert_model(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        """THROW 50001 for a stored version with other content; else insert once."""
        (table,) = self._keyed(tables[0])
        same = [
            r for r in table if r["endpoint"] == variables["endpoint"] and r["version"] == variables["version"]
        ]
        if same and same[0]["sha256"] != variables["sha256"]:
            raise server_error(
                50001, "this model version is already stored with other content; give the model a new version"
            )
        if not same:
            table.append({**variables, "active": 0, "created_at": self.now(), "created_by": "deployer"})
        return [], []

    def _assign_slot(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        models, traffic = self._keyed(tables[0], tables[1])
        name, slot, version = variables["endpoint"], variables["slot"], variables["version"]
        if not any(r["endpoint"] == name and r["version"] == version for r in models):
            raise server_error(50002, "this model version is not in the model table; insert it first")
        found = [r for r in traffic if r["endpoint"] == name and r["slot"] == slot]
        if found:
            found[0].update(version=version, updated_at=self.now())
        else:
            salts = [r["salt"] for r in traffic if r["endpoint"] == name and r["salt"] is not None]
            traffic.append(
                {
                    "endpoint": name,
                    "slot": slot,
                    "version": version,
                    "weight": 0,
                    "salt": max(salts, default=None),
                    "updated_at": self.now(),
                }
            )
        return [], []

    def _set_weight(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        (traffic,) = self._keyed(tables[0])
        found = [r for r in traffic if r["endpoint"] == variables["endpoint"] and r["slot"] == variables["slot"]]
        if not found:
            raise server_error(50004, "this endpoint has no such deployment slot")
        if not 0 <= int(variables["weight"]) <= 100:
            raise server_error(547, "The UPDATE statement conflicted with the CHECK constraint.")
        found[0].update(weight=int(variables["weight"]), updated_at=self.now())
        return [], []

    def _refresh_active(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        traffic, models = self._keyed(tables[0], next(t for t in tables if t != tables[0]))
        name = variables["endpoint"]
        mine = [r for r in traffic if r["endpoint"] == name]
        if sum(r["weight"] for r in mine) not in (0, 100):
            raise server_error(
                50005, "the traffic weights of this endpoint's slots must add up to 100 (or 0)"
            )
        serving = {r["version"] for r in mine if r["weight"] > 0}
        for row in models:
            if row["endpoint"] == name:
                row["active"] = 1 if row["version"] in serving else 0
        return [], []

    def _set_salt(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        for row in self._keyed(tables[0])[0]:
            if row["endpoint"] == variables["endpoint"]:
                row["salt"] = variables["salt"]
        return [], []

    def _restore_slot(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        (traffic,) = self._keyed(tables[0])
        if any(r["endpoint"] == variables["endpoint"] and r["slot"] == variables["slot"] for r in traffic):
            raise server_error(2627, "Violation of PRIMARY KEY constraint. Cannot insert duplicate key.")
        traffic.append({k: variables[k] for k in ("endpoint", "slot", "version", "weight", "salt", "updated_at")})
        return [], []

    # sp_getapplock / sp_releaseapplock with @LockOwner = 'Session': the lock is the session's
    # until released or until the session ends; a wait gives up after @LockTimeout ms (-1).
    def _get_applock(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        session, resource = self._session, variables["resource"]
        if session is None:
            raise server_error(1223, "Cannot take an application lock without a session.")
        deadline = time.monotonic() + int(variables["wait_ms"]) / 1000
        waited = False
        while self.app_locks.get(resource) not in (None, session):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ["result"], [(-1,)]
            waited = True
            self._app_lock_freed.wait(remaining)
        self.app_locks[resource] = session
        return ["result"], [(1 if waited else 0,)]

    def _release_applock(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        if self.app_locks.get(variables["resource"]) is not self._session:
            raise server_error(
                1223,
                f"Cannot release the application lock (Database Principal: 'public', Resource: "
                f"'{variables['resource']}') because it is not currently held.",
            )
        del self.app_locks[variables["resource"]]
        self._app_lock_freed.notify_all()
        return [], []

    def end_session(self, session: Any) -> None:
        """A closed connection's application locks are released by the server."""
        with self._lock:
            for resource in [r for r, holder in self.app_locks.items() if holder is session]:
                del self.app_locks[resource]
            self._app_lock_freed.notify_all()

    def _bind_model_name(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        raise AssertionError("handled by _bind")

    # -- migrate.py's batches, as their T-SQL says ---------------------------------------------
    def _probe_schema(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        earlier = tables[0] in self.db.tables and "endpoint" not in self.db.columns.get(tables[0], [])
        return ["earlier"], [(1 if earlier else 0,)]

    def _migrate_tables(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        """[endpoint] added to the tables that lack it: on the model table from the deployment
        document's procedure, elsewhere from the model rows of the same name; [name] dropped
        from traffic and log; the keys rebuilt on [endpoint] (duplicates fail, as with SQL Server)."""
        for index, table in enumerate(tables):
            columns = self.db.columns.get(table)
            if table not in self.db.tables or columns is None or "endpoint" in columns:
                continue
            rows = self.db.tables[table]
            if index == 0:
                for row in rows:
                    document = json.loads(row["manifest"]) if row.get("manifest") else {}
                    row["endpoint"] = document.get("procedure") or row["name"]
                self._check_unique(rows, ("endpoint", "version"))
            else:
                models = self.db.tables.get(tables[0], [])
                for row in rows:
                    found = [m["endpoint"] for m in models if m.get("name") == row["name"] and "endpoint" in m]
                    row["endpoint"] = min(found, default=row.pop("name"))
                    row.pop("name", None)
                columns.remove("name")
                self.db.required[table] = [c for c in self.db.required.get(table, []) if c != "name"]
                if index == 1:
                    self._check_unique(rows, ("endpoint", "slot"))
            columns.append("endpoint")
            self.db.required.setdefault(table, []).append("endpoint")
        return [], []

    @staticmethod
    def _check_unique(rows: list[dict[str, Any]], key: tuple[str, ...]) -> None:
        seen = [tuple(r[k] for k in key) for r in rows]
        if len(seen) != len(set(seen)):
            raise server_error(
                1505,
                "The CREATE UNIQUE INDEX statement terminated because a duplicate key was found.",
            )

    def _probe_request_log(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        earlier = tables[0] in self.db.tables and "id" in self.db.columns.get(tables[0], [])
        return ["earlier"], [(1 if earlier else 0,)]

    def _migrate_request_log(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        """The log's primary key and [id] dropped, as the batch's T-SQL says; the rows stay."""
        (log,) = tables
        columns = self.db.columns.get(log, [])
        if "id" not in columns:
            return [], []
        if "DROP COLUMN [id]" not in "".join(self.statements[-1:]):
            raise server_error(102, "the fake knows this migration only as dropping [id]")
        columns.remove("id")
        self.db.required[log] = [c for c in self.db.required.get(log, []) if c != "id"]
        self.db.defaulted.get(log, set()).discard("id")
        for row in self.db.tables[log]:
            row.pop("id", None)
        return [], []

    def _bound_procedures(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        rows = [tuple(name.split(".", 1)) for name in sorted(self.db.bindings)]
        return ["schema_name", "procedure_name"], rows

    def _unbind_model_name(self, variables: dict[str, Any], tables: list[str]) -> tuple[list, list]:
        raise AssertionError("handled by _unbind")

    def _unbind(self, flat: str) -> tuple[list[str], list]:
        schema = re.search(r"@level0name = N'(\w+)'", flat)
        procedure = re.search(r"@level1name = N'(\w+)'", flat)
        assert schema is not None and procedure is not None
        key = f"{schema.group(1)}.{procedure.group(1)}".lower()
        if key not in self.db.bindings:
            raise server_error(15217, f"Property cannot be updated or deleted. Property '{key}' does not exist.")
        del self.db.bindings[key]
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

    # -- scoring -----------------------------------------------------------------------------
    def _score_batch(self, flat: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        match = re.search(r"FROM \(VALUES (.*)\) AS v\(([^)]*)\)( WHERE 1 = 0)?;", flat)
        if match is None:
            raise server_error(102, "Incorrect syntax near 'VALUES'.")
        columns = [c.strip(" []") for c in match.group(2).split(",")]
        cells = re.findall(r"CAST\((\?|NULL) AS ([\w(), ]+?)\)(?:,|\))", match.group(1))
        types = [t for _, t in cells][: len(columns)]
        proc = re.search(r"EXEC(?:UTE)?\s+" + _NAME + r"\s+@input_query = N'[^']*'(.*?);", flat, re.I)
        if proc is None:
            raise server_error(102, "Incorrect syntax near 'EXEC'.")
        named = re.findall(r"@(\w+) = (\?|NULL\b)", proc.group(2))
        bound = iter(params)  # a None is written as NULL, not bound (connection.bind_nulls)
        values = [next(bound) if marker == "?" else None for marker, _ in cells] if not match.group(3) else []
        call = {name: next(bound) if marker == "?" else None for name, marker in named}
        if match.group(3):
            frame = pd.DataFrame({c: pd.Series([], dtype="float64") for c in columns})
        else:
            width = len(columns)
            if len(values) % width:
                raise server_error(
                    10709, "The number of columns for each row in a table value constructor must be the same."
                )
            data = [
                [_cast(v, t) for v, t in zip(values[i : i + width], types, strict=True)]
                for i in range(0, len(values), width)
            ]
            frame = pd.DataFrame(data, columns=columns)
        return self._exec(_name(proc.group(1)), frame, call)

    def _exec(
        self, name: str, frame: pd.DataFrame | None, call: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        if name not in self.db.procedures:
            raise server_error(2812, f"Could not find stored procedure '{name}'.")
        if not self.scripts_enabled:
            raise _disabled()
        if not self.may_run_scripts:
            raise _denied()
        call = dict(call or {})
        definition = self.db.procedures[name]
        key, model_name = self._key_of(name, definition)
        routes = self._routes(definition, key, model_name, call.get("slot"))
        if not routes:
            raise server_error(
                50003, "no slot of this endpoint takes traffic (or @slot names none); push the model first"
            )
        models = self._table(_tables_of(definition)[0])
        bundle = b""
        for route in routes:
            payload = next(
                (
                    r["payload"]
                    for r in models
                    if r.get(key) == model_name and r["version"] == route["version"]
                ),
                b"",
            )
            bundle += len(payload).to_bytes(8, "big") + payload
        # FOR JSON PATH leaves out NULLs
        routes_json = json.dumps([{k: v for k, v in r.items() if v is not None} for r in routes])
        params = {"model_bundle": bundle, "routes": routes_json}
        if frame is None:  # the single-row procedure binds its inputs under their names
            params.update({k: v for k, v in call.items() if k not in ("slot", "request_id")})
        try:
            result, outputs = run_external_script_with_outputs(
                _script_of(definition),
                frame,
                params,
                result_sets=_result_sets(definition),
                output_params=["request_log", "script_error"],
            )
        except ExternalScriptError as exc:
            raise server_error(exc.number, str(exc).split("\n", 1)[-1]) from None
        if outputs.get("script_error") is not None:  # the procedure's THROW of the script's failure
            raise server_error(50010, "tdsp-50010: the model failed:\n" + outputs["script_error"][-2000:])
        self._log_requests(definition, key, model_name, call, outputs.get("request_log"))
        rows = [tuple(_plain(v) for v in row) for row in result.itertuples(index=False, name=None)]
        return list(result.columns), rows

    def _key_of(self, name: str, definition: str) -> tuple[str, str | None]:
        """(column, value) the procedure finds its rows by: the endpoint its text names, or an
        earlier version's extended property on [name]; each table it reads must have the column."""
        named = re.search(r"DECLARE @endpoint nvarchar\(128\) = N'(\w+)';", definition)
        key, value = ("endpoint", named.group(1)) if named else ("name", self.db.bindings.get(name))
        if named is None and "sys.extended_properties" not in definition:
            raise server_error(137, 'Must declare the scalar variable "@endpoint".')
        for table in _tables_of(definition)[:2]:
            self._has(table, key)
        return key, value

    def _routes(
        self, definition: str, key: str, model_name: str | None, slot: str | None
    ) -> list[dict[str, Any]]:
        """The procedure's @route table: the pinned slot, else the slots with a weight, by slot."""
        traffic = self._table(_tables_of(definition)[1])
        chosen = [
            r
            for r in traffic
            if r.get(key) == model_name and (r["slot"] == slot or (slot is None and r["weight"] > 0))
        ]
        return [
            {"slot": r["slot"], "version": r["version"], "weight": r["weight"], "salt": r["salt"]}
            for r in sorted(chosen, key=lambda r: r["slot"])
        ]

    def _log_requests(
        self, definition: str, key: str, model_name: str | None, call: dict[str, Any], request_log: Any
    ) -> None:
        """The procedure's INSERT of the script's ``request_log``, a row per entry, into the
        columns its text lists: each must be the table's (Msg 207), and a NOT NULL column it
        leaves out needs a DEFAULT or an IDENTITY (Msg 515)."""
        tables = _tables_of(definition)
        if len(tables) < 3:  # target.request_log off: the procedure inserts nothing
            return
        if not isinstance(request_log, str):
            raise server_error(13609, "JSON text is not properly formatted.")
        log = self._table(tables[2])
        listed = re.search(r"INSERT INTO \[\w+\]\.\[\w+\]\s*\(([^)]*)\)", definition)
        assert listed is not None
        columns = re.findall(r"\[(\w+)\]", listed.group(1))
        self._has(tables[2], *columns)
        filled = set(columns) | self.db.defaulted.get(tables[2], set())
        for column in self.db.required.get(tables[2], []):
            if column not in filled:
                raise server_error(515, f"Cannot insert the value NULL into column '{column}'.")
        for entry in json.loads(request_log):
            self.db.identity += 1
            keys = entry.get("row_keys")
            row = {
                key: model_name,
                "t": self.now(),
                "request_id": call.get("request_id") or f"fake-{self.db.identity}",
                "slot": entry["slot"],
                "version": entry["version"],
                "status": int(entry["status"]),
                "row_count": int(entry["row_count"]),
                "latency_ms": entry.get("latency_ms"),
                "row_keys": None if keys is None else json.dumps(keys),
                "pinned": 0 if call.get("slot") is None else 1,
                "message": entry.get("message"),
            }
            if "id" in self.db.columns.get(tables[2], []):
                row["id"] = self.db.identity
            log.append(row)

    def now(self) -> datetime.datetime:
        """SYSUTCDATETIME(): naive UTC, as drivers return datetime2; never the same twice, so
        that ORDER BY a time is the order things happened in."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self._last_time = max(now, self._last_time + datetime.timedelta(microseconds=1))
        return self._last_time


_TAGGED = frozenset(
    {
        "create_model_table",
        "create_traffic_table",
        "create_request_log_table",
        "insert_model",
        "get_applock",
        "release_applock",
        "assign_slot",
        "set_weight",
        "refresh_active",
        "set_salt",
        "restore_slot",
        "probe_configuration",
        "probe_permission",
        "probe_python",
        "probe_schema",
        "migrate_tables",
        "bound_procedures",
        "probe_request_log",
        "migrate_request_log",
    }
)
#: tagged batches whose variables are not ``?`` parameters
_UNDECLARED = frozenset({"migrate_tables", "migrate_request_log"})


def _declared(flat: str, params: tuple[Any, ...]) -> dict[str, Any]:
    """The batch's ``DECLARE @x type = ?`` variables (or ``@x = ?`` arguments), bound in order."""
    found = re.findall(r"@(\w+)\s+[\w()]+\s*=\s*(\?|NULL\b)", flat) or re.findall(
        r"@(\w+)\s*=\s*(\?|NULL\b)", flat
    )
    if sum(1 for _, value in found if value == "?") != len(params):
        raise server_error(137, "Must declare the scalar variable.")
    bound = iter(params)
    return {name: next(bound) if value == "?" else None for name, value in found}


def _tables_of(definition: str) -> list[str]:
    """A scoring procedure's tables, in the order it names them: model, traffic, request log."""
    found = re.findall(r"(?:FROM|JOIN|INSERT INTO)\s+(\[\w+\]\.\[\w+\])", definition)
    ordered = list(dict.fromkeys(_name(t) for t in found))
    traffic = ordered[0]  # the routes are read first, then the payloads
    models = ordered[1]
    return [models, traffic, *ordered[2:]]


_OPERATORS = {
    "=": lambda a, b: a == b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "<>": lambda a, b: a != b,
}


def _where(rows: list[dict[str, Any]], clause: str, params: list[Any]) -> list[dict[str, Any]]:
    """Rows matching ``[col] op ? | literal`` terms joined by AND (what the backend sends)."""
    tests = []
    for term in re.split(r"\s+AND\s+", clause.strip().rstrip(";"), flags=re.I):
        match = re.fullmatch(r"\[?(\w+)\]?\s*(=|>=|<=|<>|>|<)\s*(\?|\d+|N?'[^']*')", term.strip())
        if match is None:
            raise server_error(102, f"the fake does not understand the condition: {term}")
        column, operator, value = match.groups()
        if value == "?":
            value = params.pop(0)
        elif value.isdigit():
            value = int(value)
        else:
            value = value.lstrip("N").strip("'")
        tests.append((column, _OPERATORS[operator], value))
    if params:
        raise server_error(8178, "too many parameters for the conditions")
    return [r for r in rows if all(r.get(c) is not None and op(r.get(c), v) for c, op, v in tests)]


def _ordered(rows: list[dict[str, Any]], order: str | None) -> list[dict[str, Any]]:
    if not order:  # no ORDER BY: the fake answers in insertion order
        return list(rows)
    result = list(rows)
    for part in reversed([p.strip() for p in order.split(",")]):
        match = re.fullmatch(r"\[?(\w+)\]?(?:\s+(ASC|DESC))?", part, re.I)
        if match is None:
            raise server_error(102, f"the fake does not understand ORDER BY {part}")
        column = match.group(1)
        result.sort(
            key=lambda r: (r.get(column) is None, r.get(column)),
            reverse=(match.group(2) or "").upper() == "DESC",
        )
    return result


def _cast(value: Any, sql_type: str) -> Any:
    """CAST(? AS type) of a bound value, refused as the server refuses it."""
    base = sql_type.lower().split("(")[0].strip()
    if value is None:
        return None
    try:
        if base in ("float", "real", "decimal", "numeric"):
            return float(value)
        if base in ("int", "bigint", "smallint", "tinyint"):
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base == "bit":
            return bool(int(value)) if not isinstance(value, str) else value.strip().lower() in ("1", "true")
    except (TypeError, ValueError):
        raise server_error(8114, f"Error converting data type nvarchar to {base}.") from None
    return value


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
class FakeConnection:
    """Autocommit off: the first statement after commit/rollback opens a transaction."""

    def __init__(self, server: FakeSqlServer):
        self.server = server
        self.autocommit = False
        self.closed = False
        self._snapshot: Database | None = None

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise InterfaceError(
                driver_error="Cannot create cursor on closed connection",
                ddbc_error="Cannot create cursor on closed connection",
            )
        return FakeCursor(self)

    def run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        self.begin()  # autocommit off: the first statement opens the transaction
        return self.server.run(sql, params, session=self)

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
        self.server.end_session(self)
