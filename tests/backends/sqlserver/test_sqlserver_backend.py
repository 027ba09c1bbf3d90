"""The sqlserver backend driven by the real push pipeline against tests/fakes/sqlserver_fake.py, a
fake SQL Server that enforces the server's rules (transactions roll back whole, missing
objects fail, Machine Learning Services can be off or forbidden) and scores for real: EXEC of
the procedure runs the generated Python through the sp_execute_external_script harness with
the pickled scikit-learn model stored in the model table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sql.connection import connection_string, translate_error
from tdsp_deploy.backends.sql.requests import scoring_call
from tdsp_deploy.backends.sqlserver import SqlServerBackend, input_rows, request_rows
from tdsp_deploy.backends.sqlserver.connection import SqlServerConnection
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, ExitCode, TdspError, UsageError
from tdsp_deploy.manifest import load_manifest
from tests.fakes.sqlserver_fake import FakeSqlServer, server_error
from tests.fakes.sqlserver_project import (
    FEATURES,
    NAME,
    PROCEDURE,
    SAMPLES,
    TABLE,
    backend_for,
    make_project,
    matching_libraries,
    run_push,
)


def push_fails(manifest: Path, server: FakeSqlServer, **options: Any) -> TdspError:
    with pytest.raises(TdspError) as caught:
        run_push(manifest, server, **options)
    return caught.value


@pytest.fixture
def server() -> FakeSqlServer:
    return FakeSqlServer(libraries=matching_libraries())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def rows_of(server: FakeSqlServer) -> list[tuple[str, str, int]]:
    return [(r["name"], r["version"], r["active"]) for r in server.db.tables.get(TABLE, [])]


# -- pushes --------------------------------------------------------------------------------------
def test_first_push_creates_table_row_and_procedures_and_the_procedure_scores_like_the_model(server, project):
    result = run_push(project, server)

    assert result.smoke is not None and result.smoke.passed
    assert result.smoke.answer.response == json.loads((project.parent / "expected.json").read_text())
    assert result.traffic == {"blue": 100}
    assert rows_of(server) == [("iris-classifier", "1", 1)]
    assert set(server.db.procedures) == {PROCEDURE, PROCEDURE + "_row"}
    # the rows are keyed by the procedure's name, which its own text names: no extended property
    assert [r["endpoint"] for r in server.db.tables[TABLE]] == ["score_irissql"]
    assert server.db.bindings == {} and "N'score_irissql'" in server.db.procedures[PROCEDURE]
    payload = server.db.tables[TABLE][0]["payload"]
    assert (
        payload == (project.parent / "model" / "model.pkl").read_bytes()
    )  # a bound parameter, byte for byte

    status = backend_for(project, server).status()
    assert status.exists and status.slots[0].state == "healthy" and status.slots[0].model_version == "1"
    assert status.details["versions"] == [
        {"version": "1", "sha256": server.db.tables[TABLE][0]["sha256"], "active": True}
    ]


def test_the_smoke_request_values_are_bound_parameters_never_sql_text(server, project):
    run_push(project, server)
    scoring = [
        (sql, params)
        for sql, params in zip(server.statements, server.executed_params, strict=True)
        if "#tdsp_input" in sql
    ]
    assert scoring
    sql, params = scoring[-1]
    assert "5.1" not in sql and "CAST(? AS float)" in sql
    assert list(params[:-2]) == [v for row in SAMPLES for v in row]
    assert params[-2] == "blue"  # @slot: the smoke test is pinned to the new slot


def test_an_unchanged_push_is_a_no_op(server, project):
    run_push(project, server)
    before = server.state()
    statements = len(server.statements)

    again = run_push(project, server)

    assert again.unchanged and again.smoke is None
    assert server.state() == before
    locking = ("-- tdsp-deploy: get_applock", "-- tdsp-deploy: release_applock")  # the endpoint lock
    ran = [s for s in server.statements[statements:] if not s.startswith(locking)]
    bodies = [re.sub(r"^-- tdsp-deploy: \w+\n", "", s) for s in ran]  # a tagged read is a read
    written = [s for s in bodies if not s.lstrip().upper().startswith("SELECT")]
    assert written == []  # only reads
    assert server.app_locks == {}  # and the lock it took is released


@pytest.mark.parametrize(
    ("failure", "exit_code", "words"),
    [
        (
            "scripts_off",
            ExitCode.DEPLOYMENT_FAILED,
            "sp_configure 'external scripts enabled', 1; RECONFIGURE",
        ),
        ("no_permission", ExitCode.BACKEND, "EXECUTE ANY EXTERNAL SCRIPT"),
        ("library_mismatch", ExitCode.DEPLOYMENT_FAILED, "scikit-learn"),
        ("insert_error", ExitCode.BACKEND, "injected failure"),
        ("procedure_error", ExitCode.BACKEND, "injected failure"),
        ("row_procedure_error", ExitCode.BACKEND, "injected failure"),
        ("slot_error", ExitCode.BACKEND, "injected failure"),
        ("activation_error", ExitCode.BACKEND, "injected failure"),
    ],
)
def test_a_failure_at_each_step_of_a_first_push_leaves_nothing_written(
    server, project, failure, exit_code, words
):
    arrange(server, failure)
    before = server.state()

    error = push_fails(project, server)

    assert error.exit_code == exit_code
    assert words in error.message + " " + (error.hint or "")
    assert server.state() == before
    assert server.db.tables == {} and server.db.procedures == {}


@pytest.mark.parametrize(
    "failure", ["library_mismatch", "insert_error", "procedure_error", "slot_error", "activation_error"]
)
def test_a_failure_of_a_second_push_leaves_the_first_version_serving(server, tmp_path, failure):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, server)
    before = server.state()
    second = make_project(tmp_path / "v2", version="2", max_depth=1)
    arrange(server, failure)

    push_fails(second, server)

    assert server.state() == before
    server.fail_on = server.fail_matching = None
    answer = backend_for(first, server).invoke((first.parent / "request.json").read_bytes())
    assert answer.status == 200 and {row[1] for row in answer.json()["data"]} == {"1"}


def arrange(server: FakeSqlServer, failure: str) -> None:
    if failure == "scripts_off":
        server.scripts_enabled = False
    elif failure == "no_permission":
        server.may_run_scripts = False
    elif failure == "library_mismatch":
        server.libraries["scikit-learn"] = "0.24.2"
    elif failure == "insert_error":
        server.fail_matching = r"INSERT INTO"
    elif failure == "procedure_error":
        server.fail_matching = r"^CREATE OR ALTER PROCEDURE \[dbo\]\.\[score_irissql\]\s"
    elif failure == "row_procedure_error":
        server.fail_matching = r"^CREATE OR ALTER PROCEDURE \[dbo\]\.\[score_irissql_row\]"
    elif failure == "slot_error":
        server.fail_matching = r"^-- tdsp-deploy: assign_slot"
    elif failure == "activation_error":
        server.fail_matching = r"^-- tdsp-deploy: refresh_active"


def test_a_stored_version_with_other_content_is_refused_and_nothing_changes(server, tmp_path):
    run_push(make_project(tmp_path / "v1", version="1"), server)
    before = server.state()
    error = push_fails(make_project(tmp_path / "v1b", version="1", max_depth=1), server)
    assert error.exit_code == ExitCode.DEPLOYMENT_FAILED and "other content" in error.message
    assert server.state() == before


def test_a_library_mismatch_is_pushed_with_force(server, project):
    server.libraries["numpy"] = "1.26.4"
    # the script still runs here (the harness uses this interpreter): force is what lets it through
    result = run_push(project, server, force=True)
    assert result.smoke is not None and result.smoke.passed


def test_a_failure_on_any_statement_of_a_first_push_leaves_nothing_behind(project):
    counting = FakeSqlServer(libraries=matching_libraries())
    run_push(project, counting)
    total = len(counting.statements)
    deploy_statements = next(
        i for i, sql in enumerate(counting.statements, 1) if sql.startswith("-- tdsp-deploy: refresh_active")
    )
    assert total > deploy_statements > 6
    for n in range(1, total + 1):
        server = FakeSqlServer(libraries=matching_libraries())
        server.fail_on = n
        try:
            run_push(project, server)
        except TdspError as error:
            if error.details.get("rolled_back") is False:
                continue  # the failure hit the rollback itself: reported, not hidden
            if "rolled_back" not in error.details:  # before deploy_slot, or a read after success
                complete = rows_of(server) == [("iris-classifier", "1", 1)] and len(server.db.procedures) == 2
                assert complete or server.state() == FakeSqlServer().state(), n
                continue
            state = server.state()
            # nothing of this model remains; the model table is shared by every model of the
            # database, so a rollback after the transaction committed leaves it (empty)
            assert state.procedures == {} and state.bindings == {}, n
            assert all(rows == [] for rows in state.tables.values()), n
            if n <= deploy_statements:  # failed inside deploy_slot: the transaction left nothing
                assert state == FakeSqlServer().state(), f"half-written after failing statement {n}"
        else:  # the failed statement was a read after the push had succeeded
            assert rows_of(server) == [("iris-classifier", "1", 1)], n


def test_a_second_version_can_be_discarded_back_to_the_first(server, tmp_path):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, server)
    second = make_project(tmp_path / "v2", version="2", max_depth=1)
    loaded = load_manifest(second, targets=(LocalTarget, SqlServerTarget))
    backend = SqlServerBackend(loaded.manifest, connection=server.connect())
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    package = build_package(loaded.manifest, paths.package_store())
    backend.deploy_slot("green", package)
    backend.wait_healthy("green")
    status = backend.status()
    assert [(s.name, s.model_version, s.traffic) for s in status.slots] == [
        ("blue", "1", 100),
        ("green", "2", 0),
    ]
    body = (second.parent / "request.json").read_bytes()
    assert {row[1] for row in backend.invoke(body, slot="green").json()["data"]} == {"2"}
    assert {row[1] for row in backend.invoke(body).json()["data"]} == {"1"}  # green has no traffic

    backend.discard_slot("green")

    status = backend.status()
    assert [(s.name, s.model_version, s.traffic) for s in status.slots] == [("blue", "1", 100)]
    assert [(v["version"], v["active"]) for v in status.details["versions"]] == [("1", True), ("2", False)]
    assert backend.invoke(body).json() == json.loads((first.parent / "expected.json").read_text())


def test_a_failed_push_puts_the_previous_procedure_definitions_back(server, tmp_path):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, server)
    definitions = dict(server.db.procedures)
    status_before = backend_for(first, server).status()
    # v2 changes the procedures (another output column) and then fails its smoke test
    second = make_project(tmp_path / "v2", version="2", max_depth=1)
    document = yaml.safe_load(second.read_text())
    document["target"]["outputs"].append({"name": "p_setosa", "type": "float"})
    second.write_text(yaml.safe_dump(document))
    (second.parent / "expected.json").write_text(json.dumps({"columns": ["species"], "data": [["nope"]]}))

    error = push_fails(second, server)

    assert error.exit_code == ExitCode.SMOKE_FAILED and error.details["rolled_back"] is True
    assert server.db.procedures == definitions  # the text itself, byte for byte
    after = backend_for(first, server).status()
    assert after.details["procedure_sha256"] == status_before.details["procedure_sha256"]
    assert [(s.name, s.model_version, s.traffic) for s in after.slots] == [("blue", "1", 100)]
    answer = backend_for(first, server).invoke((first.parent / "request.json").read_bytes())
    assert answer.json() == json.loads((first.parent / "expected.json").read_text())


def test_a_smoke_failure_rolls_back_to_the_first_version(server, tmp_path):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, server)
    second = make_project(tmp_path / "v2", version="2", max_depth=1)
    (second.parent / "expected.json").write_text(json.dumps({"columns": ["species"], "data": [["nope"]]}))

    error = push_fails(second, server)

    assert error.exit_code == ExitCode.SMOKE_FAILED and error.details["rolled_back"] is True
    assert [(v, a) for _, v, a in rows_of(server)] == [("1", 1), ("2", 0)]


def test_a_failed_first_push_after_deploy_removes_what_it_made(server, project):
    (project.parent / "expected.json").write_text(json.dumps({"columns": [], "data": []}))
    error = push_fails(project, server)
    assert error.exit_code == ExitCode.SMOKE_FAILED
    assert server.db.procedures == {} and rows_of(server) == []


def test_second_version_push_switches_the_active_version(server, tmp_path):
    run_push(make_project(tmp_path / "v1", version="1"), server)
    result = run_push(make_project(tmp_path / "v2", version="2", max_depth=1), server)
    assert result.deployment == "green" and result.traffic == {"blue": 0, "green": 100}
    assert [(v, a) for _, v, a in rows_of(server)] == [("1", 0), ("2", 1)]


# -- the rest of the contract ---------------------------------------------------------------------
def test_exec_of_a_missing_procedure_fails(server, project):
    backend = backend_for(project, server)
    error = pytest.raises(TdspError, backend.wait_healthy, "blue").value
    assert "Could not find stored procedure" in error.message


def test_credentials_and_mirroring_say_what_is_not_supported(server, project):
    run_push(project, server)
    backend = backend_for(project, server)
    with pytest.raises(UsageError):
        backend.credentials()
    with pytest.raises(UsageError):
        backend.set_traffic({"blue": 100}, {"blue": 10})
    capabilities = SqlServerBackend.capabilities
    assert capabilities.weighted_traffic is True and capabilities.mirror is False


def test_delete_a_slot_without_traffic_then_the_whole_endpoint(server, tmp_path):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, server)
    run_push(make_project(tmp_path / "v2", version="2", max_depth=1), server)  # green takes it all
    backend = backend_for(first, server)
    with pytest.raises(UsageError) as busy:
        backend.delete("green")
    assert "100%" in busy.value.message
    backend.delete("blue")
    assert [s.name for s in backend.status().slots] == ["green"]
    assert set(server.db.procedures) == {PROCEDURE, PROCEDURE + "_row"}

    backend.delete()

    assert server.db.procedures == {} and rows_of(server) == []
    assert all(rows == [] for rows in server.db.tables.values())  # traffic and request log too
    assert backend.status().exists is False


def test_a_script_error_is_deployment_failed_with_the_python_message(server, project):
    run_push(project, server)
    server.db.tables[TABLE][0]["payload"] = b"not a pickle"
    backend = backend_for(project, server)
    with pytest.raises(DeploymentFailed) as caught:
        backend.wait_healthy("blue")
    assert "UnpicklingError" in caught.value.message or "pickle" in caught.value.message
    answer = backend.invoke((project.parent / "request.json").read_bytes())
    assert answer.status == 500 and "pickle" in answer.json()["error"]


def test_render_writes_the_tsql(server, project, tmp_path):
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    backend = backend_for(project, server)
    package = build_package(backend.manifest, paths.package_store())
    files = backend.render(package, tmp_path / "out")
    assert any(f.name.endswith("create_procedure.sql") for f in files)
    assert server.statements == []  # offline


# -- the seam ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("number", "message", "kind", "words"),
    [
        (18456, "Login failed for user 'deployer'.", BackendError, "login"),
        (
            39023,
            "'sp_execute_external_script' is disabled on this instance of SQL Server. Use sp_configure "
            "'external scripts enabled' [1] to enable it.",
            DeploymentFailed,
            "RECONFIGURE",
        ),
        (
            229,
            "The EXECUTE permission was denied on the object 'sp_execute_external_script'.",
            BackendError,
            "EXECUTE ANY EXTERNAL SCRIPT",
        ),
        (
            39004,
            "A 'Python' script error occurred during execution of 'sp_execute_external_script' with HRESULT "
            "0x80004004.\nSTDERR message(s) from external script:\nValueError: bad input",
            DeploymentFailed,
            "bad input",
        ),
    ],
)
def test_driver_errors_are_translated_in_one_place(number, message, kind, words):
    error = translate_error(server_error(number, message), "doing")
    assert type(error) is kind
    assert words in error.message + " " + (error.hint or "")


def test_the_password_never_leaves_the_seam(monkeypatch):
    monkeypatch.setenv("TDSP_TEST_SQL_PASSWORD", "s3cret;pw")
    target = SqlServerTarget.model_validate(
        {
            "kind": "sqlserver",
            "server": "sql.example.test",
            "database": "scoring",
            "auth": {"method": "sql", "username": "u", "password_env": "TDSP_TEST_SQL_PASSWORD"},
            "inputs": [{"name": "x", "type": "float"}],
            "outputs": [{"name": "y", "type": "float"}],
        }
    )
    text = connection_string(target, driver="mssql_python", password="s3cret;pw")
    assert "PWD={s3cret;pw};" in text and "Server={tcp:sql.example.test,1433};" in text
    error = translate_error(server_error(18456, "Login failed; PWD=s3cret;pw"), secrets=["s3cret;pw"])
    assert error is not None and "s3cret" not in error.message
    assert "s3cret" not in repr(SqlServerConnection(types.SimpleNamespace(), secrets=["s3cret;pw"]))
    monkeypatch.delenv("TDSP_TEST_SQL_PASSWORD")
    with pytest.raises(TdspError) as missing:
        SqlServerConnection.connect(target)
    assert "TDSP_TEST_SQL_PASSWORD" in missing.value.message


def test_a_transaction_rolls_back_on_any_error(server):
    connection = SqlServerConnection(server.connect())
    with pytest.raises(RuntimeError), connection.transaction():
        connection.execute("IF OBJECT_ID(N'[dbo].[t]', N'U') IS NULL CREATE TABLE [dbo].[t] ([name] int)")
        raise RuntimeError("boom")
    assert server.db.tables == {}
    connection.execute("IF OBJECT_ID(N'[dbo].[t]', N'U') IS NULL CREATE TABLE [dbo].[t] ([name] int)")
    assert "dbo.t" in server.db.tables  # outside a transaction, each statement commits


def test_request_rows_follow_the_inputs_order_and_the_batch_binds_them(project):
    loaded = load_manifest(project, targets=(LocalTarget, SqlServerTarget))
    body = json.dumps({"columns": list(reversed(FEATURES)), "data": [[0.2, 1.4, 3.5, 5.1]]}).encode()
    assert request_rows(body, FEATURES) == [[5.1, 3.5, 1.4, 0.2]]
    rows = input_rows(loaded.manifest.target, [[5.1, 3.5, 1.4, 0.2]])
    sql, params = scoring_call(f"[dbo].[score_{NAME}]", SqlServerBackend.INPUT_ARGUMENT, rows, "green", None)
    assert params == [5.1, 3.5, 1.4, 0.2, "green", None]
    assert "@input_query = N'SELECT * FROM #tdsp_input', @slot = ?, @request_id = ?" in sql
    with pytest.raises(ValueError):
        request_rows(b'{"columns": ["x"], "data": [[1]]}', FEATURES)


def test_importing_the_backend_does_not_import_a_driver():
    code = (
        "import sys, tdsp_deploy.backends.sqlserver, tdsp_deploy.backends.sqlserver.connection;"
        "print(sorted(m for m in ('mssql_python', 'pyodbc', 'azure.identity', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
