"""A database as the earlier version of tdsp-deploy left it (its T-SQL kept in
tests/data/golden/sqlserver-earlier/), for the migration and wire tests."""

from __future__ import annotations

from pathlib import Path

from tdsp_deploy.backends.sqlserver import migrate
from tests import paths
from tests.fakes.sqlserver_fake import FakeSqlServer
from tests.fakes.sqlserver_project import (
    FEATURES,
    PROCEDURE,
    make_project,
    matching_libraries,
    run_push,
)

GOLDEN = paths.DATA / "golden"
EARLIER = GOLDEN / "sqlserver-earlier"
MODEL = "iris-classifier"
ENDPOINT = PROCEDURE.split(".", 1)[1]


def earlier_definition(current: str, endpoint: str) -> str:
    """A current procedure's definition with the earlier version's lines put back."""
    literal = f"N'{endpoint}'"
    text = current
    for earlier, now in migrate._EARLIER_LINES + migrate._EARLIER_LOG:
        if now:
            text = text.replace(now.format(endpoint=literal), earlier)
    # the property lookup went right after the @route declaration
    lookup = next(earlier for earlier, now in migrate._EARLIER_LINES if now == "")
    marker = "    -- Who answers:"
    return text.replace(marker, lookup + marker, 1)


def earlier_database(tmp_path: Path) -> tuple[FakeSqlServer, Path]:
    """A server as the earlier version left it after pushing version 1 (blue, all the traffic)
    and answering one call, and the project of version 1."""
    first = make_project(tmp_path / "v1", version="1")
    current = FakeSqlServer(libraries=matching_libraries())
    assert run_push(first, current).traffic == {"blue": 100}

    server = FakeSqlServer(libraries=matching_libraries())
    conn = server.connect()
    for name in ("01-create_model_table.sql", "02-create_traffic_table.sql", "03-create_request_log_table.sql"):
        conn.cursor().execute((EARLIER / name).read_text())
    for table, rows in current.db.tables.items():
        for row in rows:
            kept = {k: v for k, v in row.items() if k != "endpoint"}
            server.db.tables[table].append(kept if table == "dbo.tdsp_models" else {"name": MODEL, **kept})
    for procedure, definition in current.db.procedures.items():
        server.db.procedures[procedure] = earlier_definition(definition, ENDPOINT)
        server.db.bindings[procedure] = MODEL
    server.db.tables["dbo.tdsp_requests"].clear()
    conn.commit()
    # the earlier procedures serve (through the property, on [name]) and log the call
    arguments = ", ".join(f"@{f} = ?" for f in FEATURES)
    cursor = conn.cursor()
    cursor.execute(f"EXEC [dbo].[{ENDPOINT}_row] {arguments}", (5.1, 3.5, 1.4, 0.2))
    assert cursor.fetchall()
    conn.commit()
    assert [r["name"] for r in server.db.tables["dbo.tdsp_requests"]] == [MODEL]
    assert "endpoint" not in server.db.columns["dbo.tdsp_traffic"]
    return server, first
