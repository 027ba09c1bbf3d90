"""The synapse target's sql mode: a split between model versions, A/B experiments and logs.

The CLI connects as in production, through the driver module: a stand-in ``mssql_python``
whose ``connect`` hands out sessions of tests/fakes/synapse_sql_fake.py's pool. The pool runs the
generated procedure as its T-SQL says: the routes from the traffic table, each row's key bucket
by the HASHBYTES expression written in the procedure (the fake evaluates that text, it does not
share the local twin's code), one PREDICT per slot with onnxruntime.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tdsp_deploy.backends.synapse import predict_tsql
from tdsp_deploy.backends.synapse.sql_predict_local import key_bucket, row_key, split_rows
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import ExitCode, TdspError
from tests.fakes.dbapi_fake import install_driver
from tests.fakes.synapse_sql_fake import FakeSqlPool, _bucket_function
from tests.fakes.synapse_sql_project import FEATURES, TABLE, backend_for, make_project

TRAFFIC = "dbo.tdsp_traffic"
AB_SECTION = {"minimum_detectable_effect": 0.2, "baseline": 0.3, "primary_metric": {"type": "binary"}}


@pytest.fixture
def pool() -> FakeSqlPool:
    return FakeSqlPool()


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch, pool: FakeSqlPool) -> list[str]:
    """The connection strings the CLI opened sessions with."""
    return install_driver(monkeypatch, pool.connect, "TDSP_TEST_POOL_PASSWORD")


def two_versions(tmp_path: Path, cli: Any) -> tuple[Path, Path]:
    first = make_project(tmp_path / "v1", version="1")
    second = make_project(tmp_path / "v2", version="2", max_depth=1)
    for manifest in (first, second):
        document = yaml.safe_load(manifest.read_text())
        document["ab"] = AB_SECTION
        manifest.write_text(yaml.safe_dump(document))
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stderr
    return first, second  # green (version 2) takes all the traffic


def random_rows(n: int, seed: int = 5) -> list[list[float]]:
    values = np.random.default_rng(seed).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(n, 4)).round(2)
    return values.tolist()


def weights(pool: FakeSqlPool) -> dict[str, int]:
    return {r["slot"]: r["weight"] for r in pool.rows(TRAFFIC)}


def score(backend: Any, rows: list[list[float]]) -> tuple[list[str], list[str]]:
    """(the slot, the model version) that answered each row, in the rows' order."""
    answer = backend.invoke(json.dumps({"columns": FEATURES, "data": rows}).encode())
    assert answer.status == 200, answer.body
    return answer.headers.get("azureml-model-deployment", ""), [row[-1] for row in answer.json()["data"]]


# -- the split -----------------------------------------------------------------------------------
def test_a_70_30_split_routes_rows_by_key_as_the_local_twin_does(pool, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    changed = cli("traffic", first, "blue=70", "green=30", "--json")
    assert changed.exit_code == 0, changed.stderr
    assert weights(pool) == {"blue": 70, "green": 30}
    backend = backend_for(first, pool)
    rows = random_rows(5000)

    served, versions = score(backend, rows)

    assert served == "blue,green"
    twin = split_rows(rows, backend.target.inputs, {"blue": 70, "green": 30})
    assert versions == ["1" if slot == "blue" else "2" for slot in twin]  # row by row
    share = twin.count("blue") / len(rows)
    assert abs(share - 0.70) < 0.02, share
    assert score(backend, rows[:500])[1] == versions[:500]  # the same key, the same version
    # each version answered with its own model: version 2 is a depth-1 tree (two classes at most)
    answered = backend.invoke(json.dumps({"columns": FEATURES, "data": rows[:300]}).encode()).json()["data"]
    species = {v: {row[0] for row in answered if row[-1] == v} for v in ("1", "2")}
    assert len(species["2"]) <= 2 and len(species["1"]) == 3


def test_a_call_pinned_to_a_slot_takes_every_row_to_it(pool, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=50", "green=50").exit_code == 0
    rows = random_rows(200)
    answer = backend_for(first, pool).invoke(
        json.dumps({"columns": FEATURES, "data": rows}).encode(), slot="blue"
    )
    assert answer.status == 200 and {row[-1] for row in answer.json()["data"]} == {"1"}
    assert answer.headers["azureml-model-deployment"] == "blue"


def test_traffic_is_one_transaction_the_pool_checks_the_sum_and_rollback_returns(pool, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    backend = backend_for(first, pool)
    before = pool.state()
    pool.fail_matching = r"SET \[weight\] = @weight"
    with pytest.raises(TdspError):
        backend.set_traffic({"blue": 50, "green": 50})
    assert pool.state() == before
    with pytest.raises(TdspError) as refused:  # the pool's THROW 50005, not only the CLI's check
        backend.set_traffic({"blue": 50, "green": 20})
    assert "100" in refused.value.message and pool.state() == before

    assert cli("traffic", first, "blue=70", "green=30").exit_code == 0
    status = cli("status", first, "--json").json()
    assert {s["name"]: (s["model_version"], s["traffic"]) for s in status["slots"]} == {
        "blue": ("1", 70),
        "green": ("2", 30),
    }
    assert {r["version"]: r["active"] for r in pool.rows(TABLE)} == {"1": 1, "2": 1}
    shown = cli("status", first)  # the table people read
    assert shown.exit_code == 0 and "green" in shown.stdout + shown.stderr, shown.stderr
    back = cli("rollback", first, "--json")
    assert back.exit_code == 0, back.stderr
    assert weights(pool) == {"blue": 0, "green": 100}
    assert all("pw-only-the-fake-sees" not in text for text in (back.stdout, back.stderr))

    assert cli("delete", first, "--deployment", "green", "--yes").exit_code == ExitCode.USAGE  # it serves
    removed = cli("delete", first, "--deployment", "blue", "--yes", "--json")
    assert removed.exit_code == 0, removed.stderr
    assert weights(pool) == {"green": 100}
    assert {r["version"]: r["active"] for r in pool.rows(TABLE)} == {"1": 0, "2": 1}  # kept for a rollback
    assert cli("delete", first, "--yes").exit_code == 0
    assert pool.db.tables == {} and pool.db.procedures == {}


def test_a_canary_push_splits_and_versions_with_other_outputs_are_never_split(pool, driver, cli, tmp_path):
    make = make_project(tmp_path / "v1", version="1")
    assert cli("push", make, "--json").exit_code == 0
    canary = make_project(tmp_path / "v2", version="2", max_depth=1)
    document = yaml.safe_load(canary.read_text())
    document["rollout"] = {"traffic": 20}
    canary.write_text(yaml.safe_dump(document))
    pushed = cli("push", canary, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    assert weights(pool) == {"blue": 80, "green": 20}

    assert cli("traffic", make, "blue=50", "green=50").exit_code == 0  # the same outputs: fine
    backend = backend_for(make, pool)
    for row in pool.rows(TABLE):  # version 2 answers other outputs now
        if row["version"] == "2":
            row["manifest"] = json.dumps(
                {**json.loads(row["manifest"]), "outputs": [{"name": "x", "type": "int"}]}
            )
    with pytest.raises(TdspError) as split:
        backend.set_traffic({"blue": 60, "green": 40})
    assert split.value.exit_code == ExitCode.USAGE and "different outputs" in split.value.message


def test_the_procedures_key_hash_is_the_local_twins_for_each_key_type():
    """The bucket expression written in the procedure, evaluated by the fake from its text, gives
    every key the bucket the local twin computes: int keys, text keys, several float inputs."""
    target = SynapseTarget.model_validate(
        {
            "kind": "synapse",
            "workspace": "contoso-ml",
            "mode": "sql",
            "server": "contoso-ml.sql.azuresynapse.net",
            "database": "scoring",
            "auth": {"method": "entra"},
            "inputs": [
                {"name": "customer", "type": "bigint"},
                {"name": "region", "type": "nvarchar(8)"},
                {"name": "amount", "type": "float"},
                {"name": "ratio", "type": "real"},
            ],
            "outputs": [{"name": "score", "type": "float"}],
        }
    )
    types_ = {c.name: c.type for c in target.inputs}
    rng = np.random.default_rng(1)
    rows = [
        [
            int(rng.integers(1, 10**12)),
            str(rng.choice(["north", "south", None])),
            float(rng.normal() * 1e4),
            0.25,
        ]
        for _ in range(300)
    ]
    for ab_key in (None, "customer", "region"):
        keyed = target.model_copy(update={"ab_key": ab_key})
        text = " ".join(predict_tsql.alter_procedure(keyed, "shop", keyed.outputs).split())
        pool_bucket = _bucket_function(text, types_)
        for salt in ("", "e3b0c44298fc"):
            for row in rows:
                as_row = dict(zip(types_, row, strict=True))
                assert pool_bucket(as_row, salt) == key_bucket(salt, row_key(row, keyed.inputs, ab_key)), row
    assert key_bucket("a", "42") != key_bucket("b", "42") or key_bucket("a", "43") != key_bucket("b", "43")


# -- A/B experiments -------------------------------------------------------------------------------
def test_ab_start_status_analyze_and_promote_through_the_cli(pool, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=100").exit_code == 0
    backend = backend_for(first, pool)
    rows = random_rows(2000, seed=9)

    started = cli(
        "ab", "start", first, "--control", "blue", "--treatment", "green", "--split", "30", "--json"
    )

    assert started.exit_code == 0, started.stderr
    experiment = started.json()["id"]
    assert {r["salt"] for r in pool.rows(TRAFFIC)} == {experiment}
    assert weights(pool) == {"blue": 70, "green": 30}
    versions = score(backend, rows)[1]
    twin = split_rows(rows, backend.target.inputs, {"blue": 70, "green": 30}, salt=experiment)
    assert versions == ["1" if slot == "blue" else "2" for slot in twin]
    unsalted = split_rows(rows, backend.target.inputs, {"blue": 70, "green": 30})
    assert twin != unsalted  # a new experiment reshuffles the keys
    # the salt is the experiment's random id: 2000 rows land within 5 standard deviations of 30%
    assert abs(twin.count("green") / len(rows) - 0.30) < 0.05

    status = cli("ab", "status", first, "--json")

    assert status.exit_code == 0, status.stderr
    assert status.json()["collected"] == {"blue": twin.count("blue"), "green": twin.count("green")}

    # outcomes with an effect no random split can hide: the treatment's rows convert far more
    rng = np.random.default_rng(3)
    lines = ["request_id,outcome"]
    for record in backend.request_records(0.0):
        if not record["pinned"]:
            rate = 0.8 if record["deployment"] == "green" else 0.3
            lines.append(f"{record['id']},{int(rng.random() < rate)}")
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("\n".join(lines) + "\n")
    analyzed = cli("ab", "analyze", first, "--outcomes", outcomes, "--json")
    assert analyzed.exit_code == 0, analyzed.stderr
    assert analyzed.json()["verdict"]["decision"] == "promote"

    promoted = cli("ab", "promote", first)
    assert promoted.exit_code == 0, promoted.stderr
    assert weights(pool) == {"blue": 0, "green": 100}


def test_the_request_log_keeps_each_rows_key_its_slot_and_the_calls_that_failed(pool, tmp_path):
    import pickle

    from tests.fakes.synapse_sql_project import run_push

    first = make_project(tmp_path / "v1", version="1", ab_key="sepal_length")
    run_push(first, pool)
    backend = backend_for(first, pool)
    rows = random_rows(40)
    answer = backend.invoke(json.dumps({"columns": FEATURES, "data": rows}).encode())
    assert answer.status == 200
    request_id = answer.headers["x-request-id"]
    records = [r for r in backend.request_records(0.0) if not r["pinned"]]
    assert len(records) == 40 and {r["deployment"] for r in records} == {"blue"}
    keys = {row_key(row, backend.target.inputs, "sepal_length") for row in rows}
    assert {r["id"] for r in records} == keys  # the outcomes file joins on the ab_key values
    logged = [r for r in pool.rows("dbo.tdsp_requests") if r["request_id"] == request_id]
    assert [(r["slot"], r["status"], r["row_count"]) for r in logged] == [("blue", 200, 40)]  # one row per call
    assert len(json.loads(logged[0]["row_keys"])) == 40 and set(json.loads(logged[0]["row_keys"])) == keys

    for row in pool.rows(TABLE):  # the model cannot be loaded any more: the call fails, logged as 500
        row["payload"] = pickle.dumps("no model")
    failed = backend.invoke(json.dumps({"columns": FEATURES, "data": rows[:3]}).encode())
    assert failed.status == 500 and "could not be loaded" in failed.json()["error"]
    failures = [
        r for r in pool.rows("dbo.tdsp_requests") if r["request_id"] == failed.headers["x-request-id"]
    ]
    assert [(r["status"], r["row_count"]) for r in failures] == [(500, 3)]
    assert "could not be loaded" in failures[0]["message"]  # the pool's message, kept with the call


# -- logs ------------------------------------------------------------------------------------------
def test_logs_show_the_pushes_and_the_procedures_failed_requests_from_the_dmvs(pool, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    for row in pool.rows(TABLE):  # version 2's payload is no ONNX graph: PREDICT fails on it
        if row["version"] == "2":
            row["payload"] = b"not an onnx model"
    answer = backend_for(first, pool).invoke(
        json.dumps({"columns": FEATURES, "data": random_rows(5)}).encode()
    )
    assert answer.status >= 500

    shown = cli("logs", first, "--deployment", "green")

    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert "green: pushed iris-classifier:2 (sha256 " in text and "by deployer" in text
    assert "[dbo].[score_irispool]: request QID" in text and "could not be loaded" in text
    assert text.rstrip().endswith("now green: iris-classifier:2, 100% of traffic")
    blue = cli("logs", first, "--deployment", "blue", "--json").json()
    assert any("pushed iris-classifier:1" in line for line in blue["lines"])
    assert not any("pushed iris-classifier:2" in line for line in blue["lines"])


def test_logs_without_view_database_state_say_what_to_grant(driver, cli, tmp_path, pool):
    first, _ = two_versions(tmp_path, cli)
    pool.may_view_state = False
    shown = cli("logs", first, "--deployment", "green", "--json")
    assert shown.exit_code == ExitCode.BACKEND, shown.stdout
    assert "VIEW DATABASE STATE" in shown.json()["hint"]


def test_without_a_request_log_nothing_is_logged_and_ab_says_why(pool, tmp_path):
    from tests.fakes.synapse_sql_project import run_push

    project = make_project(tmp_path / "p", request_log=False)
    run_push(project, pool)
    assert "dbo.tdsp_requests" not in pool.db.tables
    assert "tdsp_requests" not in pool.db.procedures["dbo.score_irispool"]
    backend = backend_for(project, pool)
    assert backend.invoke(json.dumps({"columns": FEATURES, "data": random_rows(3)}).encode()).status == 200
    with pytest.raises(TdspError) as refused:
        list(backend.request_records(0.0))
    assert refused.value.exit_code == ExitCode.USAGE and "request_log" in refused.value.message


# -- the one query path ------------------------------------------------------------------------------
class CountingConnection:
    """A DB-API connection of the fake pool that counts the driver-level commits and rollbacks."""

    def __init__(self, pool: FakeSqlPool):
        self.inner = pool.connect()
        self.commits = self.rollbacks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "autocommit":
            self.inner.autocommit = value
        else:
            super().__setattr__(name, value)

    def commit(self) -> None:
        self.commits += 1
        self.inner.commit()

    def rollback(self) -> None:
        self.rollbacks += 1
        self.inner.rollback()


def test_the_pools_query_is_the_sql_server_ones_without_a_commit_per_statement(pool):
    from tdsp_deploy.backends.sql.connection import SqlConnection as SqlServerConnection
    from tdsp_deploy.backends.synapse.sql_connection import POOL_PERMISSION_HINT, SqlPoolConnection

    pooled, plain = CountingConnection(pool), CountingConnection(pool)
    in_the_pool, as_sql_server = SqlPoolConnection(pooled), SqlServerConnection(plain)
    for conn in (in_the_pool, as_sql_server):
        assert conn.query("SELECT OBJECT_ID(?, N'U');", ("dbo.nothing",)) == ([""], [(None,)])
        with pytest.raises(TdspError):
            conn.execute("SELECT nonsense;")
    assert pooled.inner.autocommit is True and (pooled.commits, pooled.rollbacks) == (0, 0)
    assert (plain.commits, plain.rollbacks) == (1, 1)  # SQL Server: each statement settles itself
    pool.may_view_state = False
    with pytest.raises(TdspError) as denied:  # the pool's words for a permission error
        in_the_pool.execute(predict_tsql.failed_requests(), ("tdsp_x", "%x%"))
    assert denied.value.hint == POOL_PERMISSION_HINT


# -- the fake pool says no where the pool does -------------------------------------------------------
def test_the_fake_pool_refuses_what_the_pool_documents_it_refuses(pool):
    conn = pool.connect()
    conn.autocommit = True
    cursor = conn.cursor()
    cursor.execute(
        "IF OBJECT_ID(N'[dbo].[t]', N'U') IS NULL\nCREATE TABLE [dbo].[t] ([endpoint] nvarchar(8) NOT NULL)\n"
        "WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);"
    )
    refusals = {
        "several variables": (
            "DECLARE @endpoint nvarchar(8) = ?; DECLARE @a int, @b int;\n"
            "SELECT @a = 1, @b = 2; UPDATE [dbo].[t] SET [endpoint] = @endpoint;",
            ("x",),
        ),
        "ANSI join": (
            "DECLARE @endpoint nvarchar(8) = ?;\nUPDATE t SET [endpoint] = @endpoint FROM [dbo].[t] AS t "
            "JOIN [dbo].[t] AS u ON t.[endpoint] = u.[endpoint];",
            ("x",),
        ),
        "Invalid column name 'query_text'": (
            predict_tsql.failed_requests().replace("r.[command]", "r.[query_text]", 1),
            ("tdsp_x", "%x%"),
        ),
    }
    for message, (sql, params) in refusals.items():
        with pytest.raises(Exception, match=re.escape(message)) as refused:
            cursor.execute(sql, params)
        assert type(refused.value).__name__ == "ProgrammingError", message


def test_a_key_converted_without_style_2_would_land_elsewhere_in_the_pool():
    """The fake evaluates the procedure's own CONVERTs: a float key written without style 2 keeps
    6 digits there, so a procedure that forgot the style would route differently from the twin."""
    target = SynapseTarget.model_validate(
        {
            "kind": "synapse",
            "workspace": "contoso-ml",
            "mode": "sql",
            "server": "contoso-ml.sql.azuresynapse.net",
            "database": "scoring",
            "auth": {"method": "entra"},
            "inputs": [{"name": "amount", "type": "float"}],
            "outputs": [{"name": "score", "type": "float"}],
        }
    )
    text = " ".join(predict_tsql.alter_procedure(target, "shop", target.outputs).split())
    careless = text.replace(
        "CONVERT(nvarchar(30), CAST(s.[amount] AS float), 2)", "CONVERT(nvarchar(30), s.[amount])"
    )
    assert careless != text
    rows = [[1234.5678901 + n] for n in range(200)]
    right, wrong = (
        _bucket_function(text, {"amount": "float"}),
        _bucket_function(careless, {"amount": "float"}),
    )
    twin = [key_bucket("", row_key(row, target.inputs, None)) for row in rows]
    assert [right({"amount": row[0]}, "") for row in rows] == twin
    assert [wrong({"amount": row[0]}, "") for row in rows] != twin


def test_validate_refuses_an_ab_key_that_is_not_an_input_and_a_shared_table(cli, tmp_path):
    project = make_project(tmp_path / "p", ab_key="customer_id")
    refused = cli("validate", project, "--json")
    assert (
        refused.exit_code == ExitCode.USAGE
        and "ab_key: 'customer_id' is not one of the inputs" in (refused.json()["message"])
    )
    shared = make_project(tmp_path / "q", traffic_table="tdsp_models")
    assert cli("validate", shared, "--json").exit_code == ExitCode.USAGE


def test_a_canary_of_a_version_with_other_outputs_is_rolled_back(pool, tmp_path):
    from tests.fakes.synapse_sql_project import push_fails, run_push

    first = make_project(tmp_path / "v1", version="1")
    run_push(first, pool)
    definition = pool.db.procedures["dbo.score_irispool"]
    fewer = make_project(
        tmp_path / "v2", version="2", max_depth=1, outputs=[{"name": "species", "type": "nvarchar(16)"}]
    )
    document = yaml.safe_load(fewer.read_text())
    document["rollout"] = {"traffic": 20}
    document["smoke_test"].pop("expect")
    fewer.write_text(yaml.safe_dump(document))

    error = push_fails(fewer, pool)

    assert "different outputs" in error.message and error.details["rolled_back"] is True
    assert weights(pool) == {"blue": 100} and pool.db.procedures["dbo.score_irispool"] == definition
    answer = backend_for(first, pool).invoke(
        json.dumps({"columns": FEATURES, "data": random_rows(5)}).encode()
    )
    assert answer.status == 200 and {row[-1] for row in answer.json()["data"]} == {"1"}
