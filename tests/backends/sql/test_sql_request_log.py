"""The one request log of both SQL targets (sql/schema.py), through the real driver: mssql-python
and its ODBC driver talk TDS to tests/tds/responder.py, below which the fake SQL Server and the
fake dedicated SQL pool answer as their engines do.

Both engines log the same call as the same row (a row per call and slot), and a database whose
log an earlier version made is converted on the next command that connects: SQL Server's loses
its ``[id]``; the pool's rows (one per scored row) become one per call and slot, its earlier
table kept aside, and its procedures altered to write the new rows.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.backends.sql import schema
from tdsp_deploy.backends.sql.requests import scoring_call
from tdsp_deploy.backends.synapse import sql_calls, sql_migrate
from tdsp_deploy.errors import BackendError
from tests.fakes.sql_wire import POOL_PASSWORD, POOL_PASSWORD_ENV, SQL_PASSWORD, SQL_PASSWORD_ENV, on_the_wire
from tests.fakes.sqlserver_fake import FakeSqlServer
from tests.fakes.sqlserver_project import FEATURES, SAMPLES, matching_libraries
from tests.fakes.sqlserver_project import backend_for as sqlserver_backend
from tests.fakes.sqlserver_project import make_project as sqlserver_project
from tests.fakes.synapse_sql_fake import _KEYS_AFTER, _KEYS_BEFORE, FakeSqlPool
from tests.fakes.synapse_sql_project import backend_for as pool_backend
from tests.fakes.synapse_sql_project import make_project as pool_project
from tests.paths import DATA

pytest.importorskip("mssql_python")
from tests.fakes.tds.responder import Responder  # noqa: E402

GOLDEN = DATA / "golden"
LOG = "dbo.tdsp_requests"


@pytest.fixture
def sqlserver(monkeypatch: pytest.MonkeyPatch) -> Any:
    server = FakeSqlServer(libraries=matching_libraries())
    monkeypatch.setenv(SQL_PASSWORD_ENV, SQL_PASSWORD)
    with Responder(server, password=SQL_PASSWORD) as listening:
        yield server, listening.port
    assert listening.failures == []


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    found = FakeSqlPool()
    monkeypatch.setenv(POOL_PASSWORD_ENV, POOL_PASSWORD)
    with Responder(found, password=POOL_PASSWORD) as listening:
        yield found, listening.port
    assert listening.failures == []


def pool_on_the_wire(root: Path, port: int, **target: Any) -> Path:
    return pool_project(root, server="127.0.0.1", port=port, encrypt=False, **target)


def invoked(cli: Any, manifest: Path, log: Any) -> str:
    """Call the endpoint once with the project's three sample rows; the call's request id, the
    one the log did not hold before (``log()``: its rows)."""
    before = {r["request_id"] for r in log()}
    answer = cli("invoke", manifest, "--request", manifest.parent / "request.json", "--json")
    assert answer.exit_code == 0, answer.stdout + answer.stderr
    assert answer.json()["status"] == 200
    (call,) = {r["request_id"] for r in log()} - before
    return call


# -- one shape -----------------------------------------------------------------------------------
def test_a_call_is_the_same_request_log_row_on_both_engines(cli, tmp_path, sqlserver, pool):
    server, server_port = sqlserver
    sql_pool, pool_port = pool
    on_sqlserver = on_the_wire(sqlserver_project(tmp_path / "sqlserver"), server_port)
    on_the_pool = pool_on_the_wire(tmp_path / "pool", pool_port)
    for manifest in (on_sqlserver, on_the_pool):
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stdout + pushed.stderr

    calls = {
        "sqlserver": invoked(cli, on_sqlserver, lambda: server.db.tables[LOG]),
        "pool": invoked(cli, on_the_pool, lambda: sql_pool.rows(LOG)),
    }

    logged = {
        "sqlserver": [r for r in server.db.tables[LOG] if r["request_id"] == calls["sqlserver"]],
        "pool": [r for r in sql_pool.rows(LOG) if r["request_id"] == calls["pool"]],
    }
    for engine, rows in logged.items():
        assert len(rows) == 1, engine  # one row per call and slot, not one per scored row
        (row,) = rows
        assert sorted(row) == sorted(schema.REQUEST_NAMES), engine
        assert (row["slot"], row["version"], row["status"], row["row_count"]) == ("blue", "1", 200, 3), engine
        assert (row["pinned"], row["row_keys"], row["message"]) == (0, None, None), engine
        assert isinstance(row["t"], datetime.datetime) and row["latency_ms"] > 0, engine
    # the tables themselves: the same columns, in the same order
    assert server.db.columns[LOG] == list(schema.REQUEST_NAMES)
    assert [c for c, _ in sql_pool.db.tables[LOG].columns] == list(schema.REQUEST_NAMES)

    # the one reader: the call's three rows, one record each, told apart the same way
    records = {
        "sqlserver": sqlserver_backend(on_sqlserver, server).request_records(0.0),
        "pool": pool_backend(on_the_pool, sql_pool).request_records(0.0),
    }
    for engine, found in records.items():
        mine = [r for r in found if r["id"].startswith(calls[engine])]
        assert [r["id"] for r in mine] == [f"{calls[engine]}:blue:{n}" for n in range(3)], engine
        assert {(r["deployment"], r["status"], r["pinned"]) for r in mine} == {("blue", 200, False)}


def test_the_log_is_read_in_pages_by_time_without_losing_or_repeating_a_call(tmp_path, monkeypatch):
    """More calls than a page, several at the same time (the pool's GETUTCDATE() is coarse)."""
    from tdsp_deploy.backends.sql import request_log

    server = FakeSqlServer(libraries=matching_libraries())
    manifest = sqlserver_project(tmp_path / "project")
    backend = sqlserver_backend(manifest, server)
    conn = server.connect()
    conn.cursor().execute(
        "-- tdsp-deploy: create_request_log_table\n" + schema.create_request_log_table(backend.tables)
    )
    when = datetime.datetime(2030, 1, 1)
    for n in range(7):
        server.db.tables[LOG].append(
            {
                "endpoint": "score_irissql",
                "t": when + datetime.timedelta(seconds=n // 3),  # three calls per second
                "request_id": f"call{n}",
                "slot": "blue",
                "version": "1",
                "status": 200,
                "row_count": 1,
                "latency_ms": 1.0,
                "row_keys": None,
                "pinned": 0,
                "message": None,
            }
        )
    conn.commit()
    monkeypatch.setattr(request_log, "LOG_PAGE", 2)

    records = list(backend.request_records(when.replace(tzinfo=datetime.UTC).timestamp()))

    assert [r["id"] for r in records] == [f"call{n}:blue:0" for n in range(7)]


# -- SQL Server: the earlier log had an [id] ----------------------------------------------------------
BEFORE_LOG = GOLDEN / "sqlserver-before-log"
#: the request log table as the version before the one log made it: the earlier versions' (tests/
#: golden/sqlserver-earlier), keyed by [endpoint] since the previous migration
BEFORE_LOG_TABLE = (GOLDEN / "sqlserver-earlier" / "03-create_request_log_table.sql").read_text().replace(
    "    [name] nvarchar(128) NOT NULL,", "    [endpoint] nvarchar(128) NOT NULL,"
)
_LOG_NOW = (
    "([endpoint], [t], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], "
    "[pinned], [message])\n    SELECT @endpoint, SYSUTCDATETIME(), @request_id, [slot], [version], [status], "
    "[row_count], [latency_ms],\n        [row_keys], CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]"
)
_LOG_BEFORE = (
    "([endpoint], [request_id], [slot], [version], [status], [row_count], [latency_ms], [row_keys], [pinned], "
    "[message])\n    SELECT @endpoint, @request_id, [slot], [version], [status], [row_count], [latency_ms], "
    "[row_keys],\n        CASE WHEN @slot IS NULL THEN 0 ELSE 1 END, [message]"
)


def before_log(definition: str) -> str:
    """A current SQL Server procedure as the version before the one log wrote it (no [t])."""
    assert definition.count(_LOG_NOW) == 1
    return definition.replace(_LOG_NOW, _LOG_BEFORE)


@pytest.mark.parametrize("name", ["05-create_procedure.sql", "06-create_row_procedure.sql"])
def test_the_sqlserver_fixture_is_the_earlier_version_s_text(name):
    """The earlier version wrote the golden procedures (tests/data/golden/sqlserver) with the request
    log lines kept in tests/data/golden/sqlserver-before-log; everything else was the same."""
    earlier = before_log((GOLDEN / "sqlserver" / name).read_text())
    assert (BEFORE_LOG / "request-log-lines.sql").read_text() in earlier


def before_log_database(cli: Any, root: Path, server: FakeSqlServer, port: int) -> Path:
    """The version before the one log: version 1 pushed, its request log table as that version
    made it (with [id]); the project of version 1."""
    first = on_the_wire(sqlserver_project(root), port)
    assert cli("push", first, "--json").exit_code == 0
    assert "[endpoint] nvarchar(128) NOT NULL" in BEFORE_LOG_TABLE and "[id] bigint IDENTITY" in BEFORE_LOG_TABLE
    del server.db.tables[LOG]
    conn = server.connect()
    conn.cursor().execute(BEFORE_LOG_TABLE)
    conn.commit()
    return first


def call_the_row_procedure(server: FakeSqlServer) -> None:
    """A call of the single-row procedure as another application makes it, on its own session."""
    conn = server.connect()
    arguments = ", ".join(f"@{f} = ?" for f in FEATURES)
    cursor = conn.cursor()
    cursor.execute(f"EXEC [dbo].[score_irissql_row] {arguments}", tuple(SAMPLES[0]))
    assert cursor.fetchall()
    conn.commit()


def test_a_sqlserver_log_with_an_id_loses_it_on_the_next_status_and_keeps_its_rows(cli, tmp_path, sqlserver):
    server, port = sqlserver
    first = before_log_database(cli, tmp_path / "v1", server, port)
    for name, definition in list(server.db.procedures.items()):
        server.db.procedures[name] = before_log(definition)
    call_the_row_procedure(server)
    assert [r["id"] for r in server.db.tables[LOG]] == [server.db.identity]

    status = cli("status", first, "--json")

    assert status.exit_code == 0, status.stdout + status.stderr
    assert server.db.columns[LOG] == list(schema.REQUEST_NAMES)
    (earlier,) = server.db.tables[LOG]
    assert "id" not in earlier and earlier["row_count"] == 1 and earlier["slot"] == "blue"
    # an endpoint's procedure not pushed since leaves the time to the DEFAULT, which stays
    call_the_row_procedure(server)
    assert len(server.db.tables[LOG]) == 2

    second = on_the_wire(sqlserver_project(tmp_path / "v2", version="2", max_depth=1), port)
    pushed = cli("push", second, "--json")
    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    assert "converting the request log" not in pushed.stderr  # once is enough
    call = invoked(cli, second, lambda: server.db.tables[LOG])
    records = list(sqlserver_backend(second, server).request_records(0.0))
    assert {r["id"] for r in records} >= {f"{call}:green:{n}" for n in range(3)} | {f"{earlier['request_id']}:blue:0"}


def test_a_sqlserver_log_conversion_that_fails_leaves_the_log_as_it_was(cli, tmp_path, sqlserver):
    server, port = sqlserver
    first = before_log_database(cli, tmp_path / "v1", server, port)
    before = server.state()
    server.fail_matching = r"^-- tdsp-deploy: migrate_request_log"

    pushed = cli("push", first, "--json")

    assert pushed.exit_code != 0 and server.fail_matching is None
    assert "converting the request log" in pushed.stderr  # the push said what it was doing
    assert server.state() == before


# -- the pool: the earlier log had a row per scored row -------------------------------------------------
EARLIER_POOL = GOLDEN / "synapse-earlier"
_CURRENT_BLOCK = re.compile(
    r"    -- A row per slot that answered into the request log \(status 500 when the query failed\),\n"
    r"    -- then the failure, with the pool's message, to the caller\.\n"
    r"    DECLARE @log nvarchar\(max\) = N'INSERT INTO (?P<log>\[\w+\]\.\[\w+\]) \([^)]*\)\n"
    r"SELECT N''(?P<endpoint>\w+)'', GETUTCDATE\(\), @request_id, r\.\[slot\], r\.\[version\], @status, COUNT\(\*\),\n"
    r"    @elapsed_ms \* 1\.0 / SUM\(COUNT\(\*\)\) OVER \(\), (?P<keys>.+?), @pinned, LEFT\(@error, 2000\)\n"
    r"FROM ' \+ @source \+ N' AS s JOIN #tdsp_routes AS r ON (?P<bucket>.+?) BETWEEN r\.\[low\] AND r\.\[high\] - 1\n"
    r"GROUP BY r\.\[slot\], r\.\[version\];';\n"
    r".*?@error = @error;\n",
    re.S,
)
_EARLIER_BLOCK = """    -- Every scored row into the request log (status 500 when the query failed), then the
    -- failure, with the pool's message, to the caller.
    DECLARE @log nvarchar(max) = N'INSERT INTO {log} ([endpoint], [t], [request_id], [slot], [version], [status], [row_key], [latency_ms], [pinned])
SELECT N''{endpoint}'', GETUTCDATE(), @request_id, r.[slot], r.[version], @status, {key} AS [row_key],
    @elapsed_ms * 1.0 / COUNT(*) OVER (), @pinned
FROM ' + @source + N' AS s JOIN #tdsp_routes AS r ON {bucket} BETWEEN r.[low] AND r.[high] - 1;';
    DECLARE @elapsed_ms float, @pinned bit = CASE WHEN @slot IS NULL THEN 0 ELSE 1 END;
    SET @elapsed_ms = DATEDIFF(millisecond, @started, GETUTCDATE());
    EXEC sp_executesql @log, N'@request_id nvarchar(64), @status int, @elapsed_ms float, @pinned bit',
        @request_id = @request_id, @status = @status, @elapsed_ms = @elapsed_ms, @pinned = @pinned;
"""


def earlier_pool_definition(current: str) -> str:
    """A current pool procedure as the earlier version wrote it: a row per scored row."""
    (match,) = _CURRENT_BLOCK.finditer(current)
    keys = match["keys"]
    if keys == "CAST(NULL AS nvarchar(max))":
        key = "CAST(NULL AS nvarchar(4000))"
    else:
        assert keys.startswith(_KEYS_BEFORE) and keys.endswith(_KEYS_AFTER)
        key = keys[len(_KEYS_BEFORE) : -len(_KEYS_AFTER)]
    earlier = _EARLIER_BLOCK.format(log=match["log"], endpoint=match["endpoint"], key=key, bucket=match["bucket"])
    return current[: match.start()] + earlier + current[match.end() :]


def test_the_earlier_pool_procedure_is_rewritten_exactly_as_the_current_version_writes_it():
    """The earlier version wrote the golden procedure (tests/data/golden/synapse) with the request
    log lines kept in tests/data/golden/synapse-earlier; everything else was the same."""
    current = (GOLDEN / "synapse" / "08-alter_procedure.sql").read_text()
    earlier = earlier_pool_definition(current)

    assert (EARLIER_POOL / "08-request-log-lines.sql").read_text() in earlier  # the fixture is faithful
    assert sql_migrate.rewrite_procedure(earlier) == current


def test_a_pool_procedure_not_as_the_earlier_version_wrote_it_is_refused():
    earlier = earlier_pool_definition((GOLDEN / "synapse" / "08-alter_procedure.sql").read_text())

    with pytest.raises(BackendError, match="not as tdsp-deploy wrote it"):
        sql_migrate.rewrite_procedure(earlier.replace("@elapsed_ms * 1.0 / COUNT(*)", "@elapsed_ms / COUNT(*)"))


def earlier_pool(cli: Any, tmp_path: Path, pool: FakeSqlPool, port: int) -> tuple[Path, str]:
    """A pool as the earlier version left it (its log a row per scored row, its procedure
    writing such rows) after one split call of the three sample rows; (project, procedure's
    current text)."""
    first = pool_on_the_wire(tmp_path / "v1", port, ab_key="sepal_length")
    assert cli("push", first, "--json").exit_code == 0
    name = "dbo.score_irispool"
    current = pool.db.procedures[name]
    del pool.db.tables[LOG]
    conn = pool.connect()
    conn.autocommit = True
    conn.cursor().execute((EARLIER_POOL / "03-create_request_log_table.sql").read_text())
    pool.db.procedures[name] = earlier_pool_definition(current)
    target = pool_backend(first, pool).target
    rows = sql_calls.input_rows(target, SAMPLES)
    batch, params = scoring_call("[dbo].[score_irispool]", sql_calls.INPUT_ARGUMENT, rows, None, "earlier-call")
    cursor = conn.cursor()
    cursor.execute(batch, params)
    assert len(cursor.fetchall()) == 3
    assert [r["request_id"] for r in pool.rows(LOG)] == ["earlier-call"] * 3  # a row per scored row
    return first, current


def test_a_pool_log_of_scored_rows_is_converted_on_the_next_status(cli, tmp_path, pool):
    found, port = pool
    first, current = earlier_pool(cli, tmp_path, found, port)
    earlier_rows = [dict(r) for r in found.rows(LOG)]

    status = cli("status", first, "--json")

    assert status.exit_code == 0, status.stdout + status.stderr
    assert [c for c, _ in found.db.tables[LOG].columns] == list(schema.REQUEST_NAMES)
    (call,) = found.rows(LOG)  # the three scored rows, one call of one slot
    assert (call["request_id"], call["slot"], call["row_count"], call["status"]) == ("earlier-call", "blue", 3, 200)
    assert sorted(json.loads(call["row_keys"])) == sorted(r["row_key"] for r in earlier_rows)
    assert found.rows("dbo.tdsp_requests_rows") == earlier_rows  # the earlier table, kept aside
    assert found.db.procedures["dbo.score_irispool"] == current  # altered as a push writes it now

    records = list(pool_backend(first, found).request_records(0.0))  # the earlier rows, as before
    assert sorted(r["id"] for r in records) == sorted(r["row_key"] for r in earlier_rows)
    call_id = invoked(cli, first, lambda: found.rows(LOG))
    assert [r["row_count"] for r in found.rows(LOG) if r["request_id"] == call_id] == [3]
    again = cli("push", first, "--json")
    assert again.exit_code == 0 and "converting the request log" not in again.stderr


def test_a_pool_conversion_stopped_between_its_steps_is_finished_by_the_next_command(cli, tmp_path, pool):
    found, port = pool
    first, current = earlier_pool(cli, tmp_path, found, port)
    found.fail_matching = r"^RENAME OBJECT \[dbo\]\.\[tdsp_requests_calls\]"  # after the first rename

    failed = cli("status", first, "--json")

    assert failed.exit_code != 0 and found.fail_matching is None
    assert LOG not in found.db.tables and "dbo.tdsp_requests_calls" in found.db.tables
    finished = cli("status", first, "--json")
    assert finished.exit_code == 0, finished.stdout + finished.stderr
    assert [r["row_count"] for r in found.rows(LOG)] == [3]
    assert found.db.procedures["dbo.score_irispool"] == current
