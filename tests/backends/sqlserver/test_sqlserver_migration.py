"""A database made by the previous tdsp-deploy (rows keyed by the model's name, procedures bound
to it by the extended property ``tdsp_model_name``) brought to the one schema by a push.

The earlier version's T-SQL is kept as it wrote it, in tests/data/golden/sqlserver-earlier/ (the
golden files of that version; the procedures' generated Python script, which the migration
does not touch, left out): its tables are created from that text, and its procedures are the
current ones with the earlier lines put back, which the first test proves equal to what the
earlier version wrote.
"""

from __future__ import annotations

import re

import pytest

from tdsp_deploy.backends.sql import rows as sql_rows
from tdsp_deploy.backends.sqlserver import migrate
from tdsp_deploy.errors import BackendError
from tests.fakes.dbapi_fake import install_driver
from tests.fakes.sqlserver_earlier import (
    EARLIER,
    ENDPOINT,
    GOLDEN,
    MODEL,
    earlier_database,
    earlier_definition,
)
from tests.fakes.sqlserver_fake import DatabaseError
from tests.fakes.sqlserver_project import (
    backend_for,
    make_project,
)


def without_script(definition: str) -> str:
    text, found = re.subn(r"@script = N'(?:[^']|'')*'", "@script = N'<the generated script>'", definition)
    assert found == 1
    return text


@pytest.mark.parametrize("name", ["05-create_procedure.sql", "06-create_row_procedure.sql"])
def test_the_earlier_procedures_are_rewritten_exactly_as_the_current_version_writes_them(name):
    earlier = (EARLIER / name).read_text()
    current = without_script((GOLDEN / "sqlserver" / name).read_text())

    assert migrate.rewrite_procedure(earlier, "score_iris") == current
    assert earlier_definition(current, "score_iris") == earlier  # the fixture below is faithful


def test_a_procedure_not_as_the_earlier_version_wrote_it_is_refused():
    earlier = (EARLIER / "05-create_procedure.sql").read_text()
    edited = earlier.replace("WHERE [name] = @model_name AND", "WHERE [name] = @model_name  AND")

    with pytest.raises(BackendError, match="not as tdsp-deploy wrote it"):
        migrate.rewrite_procedure(edited, "score_iris")


def test_the_fake_refuses_the_new_key_on_an_earlier_database(tmp_path):
    server, first = earlier_database(tmp_path)
    tables = backend_for(first, server).tables

    with pytest.raises(DatabaseError, match="Invalid column name 'endpoint'"):
        server.connect().cursor().execute(sql_rows.list_slots(tables), (ENDPOINT,))


def test_a_push_migrates_an_earlier_database_and_its_rows_stay_readable(tmp_path, cli, monkeypatch):
    server, first = earlier_database(tmp_path)
    install_driver(monkeypatch, server.connect, "TDSP_TEST_SQL_PASSWORD")
    second = make_project(tmp_path / "v2", version="2", max_depth=1)

    pushed = cli("push", second, "--json")

    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    assert "[name] to [endpoint]" in pushed.stderr  # the migration says what it does
    models = [(r["endpoint"], r["name"], r["version"]) for r in server.db.tables["dbo.tdsp_models"]]
    assert models == [(ENDPOINT, MODEL, "1"), (ENDPOINT, MODEL, "2")]
    traffic = {r["slot"]: (r["endpoint"], r["version"], r["weight"]) for r in server.db.tables["dbo.tdsp_traffic"]}
    assert traffic == {"blue": (ENDPOINT, "1", 0), "green": (ENDPOINT, "2", 100)}
    assert "name" not in server.db.columns["dbo.tdsp_traffic"]
    assert [r["endpoint"] for r in server.db.tables["dbo.tdsp_requests"]][0] == ENDPOINT  # the earlier call
    assert server.db.bindings == {}
    assert not any("extended_properties" in d for d in server.db.procedures.values())

    status = cli("status", second, "--json")
    assert status.exit_code == 0, status.stderr
    slots = {s["name"]: (s["model_version"], s["traffic"]) for s in status.json()["slots"]}
    assert slots == {"blue": ("1", 0), "green": ("2", 100)}

    split = cli("traffic", second, "blue=30", "green=70", "--json")
    assert split.exit_code == 0, split.stderr
    assert {r["slot"]: r["weight"] for r in server.db.tables["dbo.tdsp_traffic"]} == {"blue": 30, "green": 70}

    back = cli("rollback", second, "--json")
    assert back.exit_code == 0, back.stderr
    assert {r["slot"]: r["weight"] for r in server.db.tables["dbo.tdsp_traffic"]} == {"blue": 0, "green": 100}

    again = cli("push", second, "--json")  # a second push finds the one schema: nothing to migrate
    assert again.exit_code == 0, again.stderr
    assert "[name] to [endpoint]" not in again.stderr


def test_a_migration_that_fails_leaves_the_earlier_database_as_it_was(tmp_path, cli, monkeypatch):
    server, _ = earlier_database(tmp_path)
    install_driver(monkeypatch, server.connect, "TDSP_TEST_SQL_PASSWORD")
    before = server.state()
    server.fail_matching = r"^-- tdsp-deploy: unbind_model_name"  # the last step of the migration

    pushed = cli("push", make_project(tmp_path / "v2", version="2", max_depth=1), "--json")

    assert pushed.exit_code != 0
    assert server.fail_matching is None and "injected failure" in pushed.stdout  # it failed there
    assert server.state() == before
