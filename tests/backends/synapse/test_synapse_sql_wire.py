"""The Synapse target's SQL-pool mode through the real driver: mssql-python and its bundled
ODBC driver talk TDS to tests/fakes/tds/responder.py, which hands each statement to the fake
dedicated SQL pool (tests/fakes/synapse_sql_fake.py). The pool's session runs in autocommit with
explicit transactions (sql_connection.py); here the driver itself turns autocommit on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.errors import ExitCode
from tests.fakes.sql_wire import POOL_PASSWORD, POOL_PASSWORD_ENV
from tests.fakes.synapse_sql_fake import FakeSqlPool
from tests.fakes.synapse_sql_project import make_project

pytest.importorskip("mssql_python")
from tests.fakes.tds.responder import SP_PREPEXEC, Responder  # noqa: E402

PASSWORD, PASSWORD_ENV = POOL_PASSWORD, POOL_PASSWORD_ENV


@pytest.fixture
def pool() -> FakeSqlPool:
    return FakeSqlPool()


@pytest.fixture
def responder(pool: FakeSqlPool, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with Responder(pool, password=PASSWORD) as listening:
        yield listening
    assert listening.failures == []


def project_on_the_wire(root: Path, port: int) -> Path:
    return make_project(root, server="127.0.0.1", port=port, encrypt=False)


def statements(responder: Responder) -> list[str]:
    found = []
    for kind, what in responder.requests:
        if kind == "batch":
            found.append(what)
        elif kind == "rpc" and what[0] == SP_PREPEXEC:
            found.append(what[1][2])
    return found


def test_a_pool_push_runs_every_step_through_the_real_driver(cli, tmp_path, pool, responder):
    manifest = project_on_the_wire(tmp_path / "project", responder.port)

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
    assert pushed.json()["traffic"] == {"blue": 100}
    sent = statements(responder)
    assert any("BEGIN TRANSACTION" in s for s in sent) and any("COMMIT TRANSACTION" in s for s in sent)
    assert any(s.startswith("CREATE PROCEDURE") or "CREATE PROCEDURE" in s[:200] for s in sent)
    assert any("PREDICT(" in s or "EXEC [dbo].[score_" in s for s in sent)
    # no None reached the driver (it would have asked the pool to describe the statement)
    assert not [what for kind, what in responder.requests if kind == "rpc" and isinstance(what[0], str)]

    request = tmp_path / "project" / "request.json"
    invoked = cli("invoke", manifest, "--request", request, "--json")
    assert invoked.exit_code == 0, invoked.stdout + invoked.stderr
    assert invoked.json()["status"] == 200


def test_a_pool_throw_keeps_its_identity_through_the_driver(cli, tmp_path, pool, responder):
    """The pool's own THROW (a model version stored with other content: 50001) through the
    driver, which keeps neither the number nor a second record."""
    first = project_on_the_wire(tmp_path / "v1", responder.port)
    assert cli("push", first, "--json").exit_code == 0
    retrained = make_project(
        tmp_path / "v2", version="1", max_depth=1, server="127.0.0.1", port=responder.port, encrypt=False
    )

    pushed = cli("push", retrained, "--json")

    assert pushed.exit_code == ExitCode.DEPLOYMENT_FAILED, pushed.stdout + pushed.stderr
    error = pushed.json()
    assert "tdsp-50001" in error["message"] and "another model.version" in error["hint"]


def test_validate_render_and_status_say_predict_is_off_in_dedicated_pools(cli, tmp_path, pool, responder):
    manifest = project_on_the_wire(tmp_path / "project", responder.port)

    validated = cli("validate", manifest, "--json")
    assert validated.exit_code == 0
    assert any("PREDICT is off by default" in w and "mode: spark" in w for w in validated.json()["warnings"])

    rendered = cli("render", manifest, "-o", tmp_path / "out")
    assert rendered.exit_code == 0, rendered.stderr
    assert "PREDICT is off by default" in rendered.stderr
    assert "mode: spark" in (tmp_path / "out" / "score-example.sql").read_text()

    assert cli("push", manifest, "--json").exit_code == 0
    status = cli("status", manifest, "--json")
    assert "PREDICT is off by default" in status.json()["details"]["notice"]
    human = cli("status", manifest)
    assert "note: T-SQL PREDICT is off by default" in human.stdout + human.stderr


def test_a_pool_that_refuses_predict_is_explained(cli, tmp_path, responder, pool):
    """The pool's parser refuses MODEL = ...: the push says PREDICT is unavailable there and
    points to mode: spark, instead of showing a bare syntax error."""
    pool.predict_enabled = False
    manifest = project_on_the_wire(tmp_path / "project", responder.port)

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == ExitCode.DEPLOYMENT_FAILED, pushed.stdout + pushed.stderr
    error = pushed.json()
    assert "does not run T-SQL PREDICT" in error["message"]
    assert "mode: spark" in error["hint"]
    assert pool.rows("dbo.tdsp_traffic") == []  # rolled back: nothing serves
