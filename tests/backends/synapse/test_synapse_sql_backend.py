"""The synapse target's sql mode driven by the real push pipeline against tests/fakes/synapse_sql_fake.py,
a fake dedicated SQL pool that enforces the pool's rules (no DDL in a user transaction, aborted
transactions, no CREATE OR ALTER, enforced keys refused) and scores for real: the procedure's
PREDICT runs the stored ONNX payload with onnxruntime, feeding each model input from its column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sql.connection import SqlConnection as SqlServerConnection
from tdsp_deploy.backends.synapse.sql_pool import SqlPoolBackend
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import BackendError, ExitCode, TdspError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.smoke import json_differences
from tests import paths
from tests.fakes.synapse_sql_fake import FakeSqlPool
from tests.fakes.synapse_sql_project import (
    FEATURES,
    NAME,
    PROCEDURE,
    SAMPLES,
    TABLE,
    backend_for,
    make_project,
    push_fails,
    run_push,
)

ROOT = paths.ROOT


def versions(pool: FakeSqlPool) -> list[tuple[str, int]]:
    return [(r["version"], r["active"]) for r in pool.rows(TABLE)]


def writes(statements: list[str]) -> list[str]:
    return [s for s in statements if not s.lstrip().upper().startswith("SELECT")]


def without_the_request_log(state: Any) -> Any:
    state.tables.pop("dbo.tdsp_requests", None)
    return state


@pytest.fixture
def pool() -> FakeSqlPool:
    return FakeSqlPool()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


# -- pushes --------------------------------------------------------------------------------------
def test_a_first_push_stores_the_converted_onnx_model_and_predict_answers_like_the_model(pool, project):
    result = run_push(project, pool)

    assert result.smoke is not None and result.smoke.passed
    expected = json.loads((project.parent / "expected.json").read_text())
    assert json_differences(expected, result.smoke.answer.response, 1e-12) == []
    assert result.traffic == {"blue": 100} and pool.predict_calls > 0
    assert versions(pool) == [("1", 1)]
    row = pool.rows(TABLE)[0]
    assert row["endpoint"] == f"score_{NAME}" and row["name"] == "iris-classifier" and row["flavor"] == "onnx"
    stored = onnx.load_from_string(row["payload"])
    assert [i.name for i in stored.graph.input] == FEATURES  # one input per column
    assert set(pool.db.procedures) == {PROCEDURE}
    status = backend_for(project, pool).status()
    assert status.exists and [(s.name, s.state, s.model_version) for s in status.slots] == [
        ("blue", "healthy", "1")
    ]
    assert status.slots[0].details["payload"] == "sklearn"


def test_sample_values_and_the_model_name_travel_as_parameters(pool, project):
    run_push(project, pool)
    texts = "\n".join(pool.statements)
    assert "iris-classifier" not in texts and "5.1" not in texts
    scoring = [p for s, p in zip(pool.statements, pool.executed_params, strict=True) if "#tdsp_input (" in s]
    *values, slot, request_id = scoring[-1]
    assert values == [v for row in SAMPLES for v in row] and slot == "blue"  # pinned to the new slot
    assert len(request_id) == 32  # the call's id in the request log


def test_ddl_runs_outside_the_transaction_and_only_rows_change_inside_it(pool, project):
    run_push(project, pool)
    begin = pool.statements.index("BEGIN TRANSACTION;")
    commit = pool.statements.index("COMMIT TRANSACTION;")
    inside = pool.statements[begin + 1 : commit]
    untagged = [
        s.removeprefix(s.split("\n", 1)[0] + "\n") if s.startswith("-- tdsp-deploy:") else s for s in inside
    ]
    assert [s.split(None, 1)[0] for s in untagged] == ["DECLARE", "DECLARE", "DECLARE"]
    assert any("INSERT INTO" in s for s in inside) and any("SET [active]" in s for s in inside)
    assert any("[tdsp_traffic]" in s and "INSERT INTO" in s for s in inside)  # the slot, no traffic


def test_the_fake_pool_refuses_ddl_from_a_connection_left_in_implicit_transactions(pool, project):
    """SQL Server's wrapper keeps autocommit off (a transaction per statement): the pool says no."""
    from tdsp_deploy.backends.synapse import predict_tsql

    target = load_manifest(project, targets=(LocalTarget, SynapseTarget)).manifest.target
    implicit = SqlServerConnection(pool.connect())
    error = pytest.raises(TdspError, implicit.execute, predict_tsql.create_model_table(target)).value
    assert "no DDL" in error.message and pool.db.tables == {}
    with pytest.raises(TdspError, match="CREATE OR ALTER"):
        backend_for(project, pool).connection.execute("CREATE OR ALTER PROCEDURE [dbo].[x] AS SELECT 1;")


def test_an_unchanged_push_is_a_no_op(pool, project):
    run_push(project, pool)
    before, count = pool.state(), len(pool.statements)
    again = run_push(project, pool)
    assert again.unchanged and again.smoke is None
    assert pool.state() == before and writes(pool.statements[count:]) == []


def test_a_second_version_switches_and_the_first_stays_as_rollback_material(pool, tmp_path):
    run_push(make_project(tmp_path / "v1", version="1"), pool)
    result = run_push(make_project(tmp_path / "v2", version="2", max_depth=2), pool)
    assert result.deployment == "green" and result.traffic == {"blue": 0, "green": 100}
    assert versions(pool) == [("1", 0), ("2", 1)]


def test_a_failed_smoke_test_restores_the_first_version_and_its_procedure(pool, tmp_path):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, pool)
    definition = pool.db.procedures[PROCEDURE]
    second = make_project(
        tmp_path / "v2", version="2", max_depth=2, outputs=[{"name": "species", "type": "nvarchar(16)"}]
    )
    (second.parent / "expected.json").write_text(json.dumps({"columns": ["species"], "data": [["nope"]]}))

    error = push_fails(second, pool)

    assert error.exit_code == ExitCode.SMOKE_FAILED and error.details["rolled_back"] is True
    assert versions(pool) == [("1", 1)]  # the failed version's row is gone too
    assert pool.db.procedures[PROCEDURE] == definition  # the first version's outputs again
    answer = backend_for(first, pool).invoke((first.parent / "request.json").read_bytes())
    assert (
        json_differences(json.loads((first.parent / "expected.json").read_text()), answer.json(), 1e-12) == []
    )


@pytest.mark.parametrize(
    "step",
    [
        r"^IF OBJECT_ID\(N'\[dbo\]\.\[tdsp_models\]', N'U'\) IS NULL",
        r"^IF OBJECT_ID\(N'\[dbo\]\.\[tdsp_traffic\]', N'U'\) IS NULL",
        r"EXEC \(N'CREATE PROCEDURE",
        r"INSERT INTO",
        r"@slot nvarchar\(64\) = \?, @version",
        r"SET \[active\]",
        r"SET \[weight\]",
        r"^ALTER PROCEDURE",
        r"COMMIT TRANSACTION",
    ],
)
def test_a_failure_at_each_step_of_a_second_push_leaves_the_first_version_serving(pool, tmp_path, step):
    first = make_project(tmp_path / "v1", version="1")
    run_push(first, pool)
    before = without_the_request_log(pool.state())
    second = make_project(tmp_path / "v2", version="2", max_depth=2)
    pool.fail_matching = step

    error = push_fails(second, pool)

    assert "injected failure" in error.message and "undo_failed" not in error.details
    # the request log keeps the calls the failed push made (its probe and smoke test): history
    assert without_the_request_log(pool.state()) == before
    answer = backend_for(first, pool).invoke((first.parent / "request.json").read_bytes())
    assert (
        json_differences(json.loads((first.parent / "expected.json").read_text()), answer.json(), 1e-12) == []
    )


def test_a_failure_on_any_statement_of_a_first_push_leaves_nothing_behind(project):
    counting = FakeSqlPool()
    run_push(project, counting)
    total = len(counting.statements)
    assert total > 10
    for n in range(1, total + 1):
        pool = FakeSqlPool()
        pool.fail_on = n
        try:
            run_push(project, pool)
        except TdspError as error:
            if error.details.get("rolled_back") is False or "undo_failed" in error.details:
                continue  # the failure hit the undo itself: reported, not hidden
            if "rolled_back" not in error.details and versions(pool) == [("1", 1)]:
                assert set(pool.db.procedures) == {PROCEDURE}, n  # a read after the push had succeeded
                continue
            assert pool.state() == FakeSqlPool().state(), f"half-written after failing statement {n}"
        else:  # the failed statement was a read after the push had succeeded
            assert versions(pool) == [("1", 1)], n


def test_a_model_that_does_not_fit_predict_is_refused_before_any_statement(pool, tmp_path):
    project = make_project(tmp_path / "p")
    raw = yaml.safe_load(project.read_text())
    raw["model"] = {"path": str(ROOT / "examples" / "iris" / "model" / "model.onnx"), "flavor": "onnx"}
    project.write_text(yaml.safe_dump(raw))

    error = push_fails(project, pool)

    assert error.exit_code == ExitCode.USAGE and "holds 4 columns in one tensor" in error.message
    assert writes(pool.statements) == []


def test_a_parity_failure_is_refused_before_any_statement(pool, tmp_path):
    project = make_project(tmp_path / "p", max_depth=3)  # a tree: converted in float32
    raw = yaml.safe_load(project.read_text())
    raw["smoke_test"]["tolerance"] = 0.0
    project.write_text(yaml.safe_dump(raw))

    error = push_fails(project, pool)

    assert error.exit_code == ExitCode.SMOKE_FAILED and error.kind == "onnx_parity"
    assert "differently from the scikit-learn model" in error.message
    assert writes(pool.statements) == []


def test_mirrors_credentials_a_slot_that_takes_traffic_and_delete(pool, project):
    run_push(project, pool)
    backend = backend_for(project, pool)
    for call in (
        lambda: backend.set_traffic({"blue": 100}, {"green": 10}),
        lambda: backend.set_traffic({"blue": 50, "nope": 50}),
        lambda: backend.delete("blue"),  # it takes the traffic
        lambda: backend.logs("nope"),
        backend.credentials,
    ):
        assert pytest.raises(TdspError, call).value.exit_code == ExitCode.USAGE
    backend.delete()
    assert pool.db.procedures == {} and pool.db.tables == {}
    assert backend.status().exists is False


def test_a_bad_request_gets_400_and_the_caller_keeps_working(pool, project):
    run_push(project, pool)
    backend = backend_for(project, pool)
    assert backend.invoke(b'{"columns": ["sepal_length"], "data": [[1.0]]}').status == 400
    assert backend.invoke((project.parent / "request.json").read_bytes()).status == 200


# -- through the CLI and the synapse entry point ------------------------------------------------------
def test_render_through_the_cli_writes_the_tsql_and_the_onnx_payload_offline(cli, project, tmp_path):
    out = tmp_path / "rendered"
    result = cli("render", project, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert "08-alter_procedure.sql" in names and "model.onnx" in names, names
    payload = next(out.rglob("model.onnx")).read_bytes()
    assert [i.name for i in onnx.load_from_string(payload).graph.input] == FEATURES
    pool = FakeSqlPool()
    run_push(project, pool)
    assert pool.rows(TABLE)[0]["payload"] == payload  # rendered exactly as a push inserts it


def test_validate_refuses_a_column_type_predict_does_not_take(cli, tmp_path):
    project = make_project(tmp_path / "p")
    raw = yaml.safe_load(project.read_text())
    raw["target"]["inputs"][0]["type"] = "decimal(10,2)"
    project.write_text(yaml.safe_dump(raw))
    result = cli("validate", project, "--json")
    assert result.exit_code == ExitCode.USAGE
    assert "sepal_length is decimal(10,2); PREDICT takes only" in result.json()["message"]


def test_scoring_locally_gives_the_pools_answer(pool, project):
    """The prepared payload run here with PREDICT's column mapping = the procedure's answer."""
    from tdsp_deploy import paths
    from tdsp_deploy.packaging import build_package

    run_push(project, pool)
    loaded = load_manifest(project, targets=(LocalTarget, SynapseTarget))
    backend = SqlPoolBackend(loaded.manifest, connection=pool.connect())
    body = (project.parent / "request.json").read_bytes()
    local = backend.score_locally(build_package(loaded.manifest, paths.package_store()), body)
    assert local == backend.invoke(body).json()


def test_two_commands_on_one_machine_take_turns_on_the_endpoint(pool, tmp_path):
    """The pool has no application locks: commands on one machine share a lock file per pool
    and endpoint; the second waits, then gives up with exit 3."""
    manifest = make_project(tmp_path / "project")
    first, second = backend_for(manifest, pool), backend_for(manifest, pool)
    told: list[str] = []
    second.progress = lambda event: told.append(event.message)
    with first.lock(timeout=5):
        with pytest.raises(BackendError) as caught:
            second.lock(timeout=0.3).__enter__()
        assert caught.value.exit_code == ExitCode.BACKEND == 3
    assert any("another command is changing endpoint" in m for m in told)
    with second.lock(timeout=0):  # free once the first let go
        pass
