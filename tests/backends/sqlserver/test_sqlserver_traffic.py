"""Traffic, A/B tests, logs and --force on the sqlserver target, through the real CLI.

The CLI connects as it does in production, through the driver module: a stand-in
``mssql_python`` module whose ``connect`` hands out connections to tests/fakes/sqlserver_fake.py's
server, which keeps the traffic and request log tables and runs the generated routing Python
for real (tests/fakes/sqlserver_harness.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import tests.fakes.sqlserver_traffic as shared
from tdsp_deploy.errors import ExitCode, TdspError
from tests.fakes.sqlserver_project import FEATURES, backend_for, make_project, train
from tests.fakes.sqlserver_traffic import random_rows, two_versions, weights

# the fixtures: the fake server, and the CLI's driver module handing out its connections
server = shared.server
driver = shared.driver


# -- traffic ------------------------------------------------------------------------------------
def test_traffic_sets_the_split_in_the_table_and_rollback_returns_to_the_last(server, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert weights(server) == {"blue": 0, "green": 100}

    changed = cli("traffic", first, "blue=70", "green=30", "--json")

    assert changed.exit_code == 0, changed.stderr
    assert changed.json()["traffic"] == {"blue": 70, "green": 30}
    assert weights(server) == {"blue": 70, "green": 30}
    status = cli("status", first, "--json").json()
    assert {s["name"]: (s["model_version"], s["traffic"]) for s in status["slots"]} == {
        "blue": ("1", 70),
        "green": ("2", 30),
    }
    models = {r["version"]: r["active"] for r in server.db.tables["dbo.tdsp_models"]}
    assert models == {"1": 1, "2": 1}  # both versions take traffic
    shown = cli("status", first)  # the table people read
    assert shown.exit_code == 0, shown.stderr
    assert "blue" in shown.stdout + shown.stderr and "green" in shown.stdout + shown.stderr

    back = cli("rollback", first, "--json")

    assert back.exit_code == 0, back.stderr
    assert weights(server) == {"blue": 0, "green": 100}
    assert all("pw-only-the-fake-sees" not in text for text in (changed.stdout, changed.stderr))


def test_the_split_is_written_in_one_transaction_and_the_server_checks_the_sum(server, tmp_path, cli, driver):
    first, _ = two_versions(tmp_path, cli)
    backend = backend_for(first, server)
    before = server.state()
    server.fail_matching = r"^-- tdsp-deploy: set_weight.*"  # the first weight written fails
    server.fail_on = None
    with pytest.raises(TdspError):
        backend.set_traffic({"blue": 50, "green": 50})
    assert server.state() == before

    with pytest.raises(TdspError) as refused:  # the server's THROW 50005, not only our check
        backend.set_traffic({"blue": 50, "green": 20})
    assert refused.value.exit_code == ExitCode.DEPLOYMENT_FAILED and "100" in refused.value.hint
    assert server.state() == before


def test_a_split_routes_each_row_by_hash_and_logs_it_for_the_ab_analysis(server, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=70", "green=30").exit_code == 0
    backend = backend_for(first, server)
    rows = random_rows(2000)
    body = json.dumps({"columns": FEATURES, "data": rows}).encode()

    answer = backend.invoke(body)

    assert answer.status == 200 and answer.deployment == "blue,green"
    data = answer.json()["data"]
    served = np.array([version for _, version in data])
    assert abs((served == "2").mean() - 0.30) < 0.05
    import pandas as pd

    frame = pd.DataFrame(rows, columns=FEATURES)
    expected = {"1": train(3).predict(frame), "2": train(1).predict(frame)}
    assert [label for label, _ in data] == [expected[v][i] for i, v in enumerate(served)]
    again = backend.invoke(body).json()["data"]
    assert [v for _, v in again] == served.tolist()  # deterministic

    records = list(backend.request_records(0.0))
    live = [r for r in records if not r["pinned"]]
    assert len(live) == 2 * len(rows)
    first_call = live[: len(rows)]
    assert {r["deployment"] for r in first_call} == {"blue", "green"}
    by_row = {int(r["id"].rsplit(":", 1)[1]): r["deployment"] for r in first_call}
    assert [by_row[i] for i in range(len(rows))] == ["green" if v == "2" else "blue" for v in served]
    assert all(r["status"] == 200 and r["latency_ms"] is not None for r in live)


def test_ab_start_status_analyze_and_promote_through_the_cli(server, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=100").exit_code == 0

    started = cli(
        "ab", "start", first, "--control", "blue", "--treatment", "green", "--split", "50", "--json"
    )

    assert started.exit_code == 0, started.stderr
    experiment = started.json()["id"]
    assert {r["salt"] for r in server.db.tables["dbo.tdsp_traffic"]} == {experiment}
    assert weights(server) == {"blue": 50, "green": 50}
    backend = backend_for(first, server)
    for call in range(8):
        body = json.dumps({"columns": FEATURES, "data": random_rows(100, seed=call)}).encode()
        assert backend.invoke(body).status == 200

    status = cli("ab", "status", first, "--json")

    assert status.exit_code == 0, status.stderr
    collected = status.json()["collected"]
    assert sum(collected.values()) == 800 and min(collected.values()) > 300

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
    document = analyzed.json()
    assert document["verdict"]["decision"] == "promote"
    assert document["variants"]["green"]["n"] + document["variants"]["blue"]["n"] == 800
    assert cli("ab", "promote", first).exit_code == 0
    assert weights(server) == {"blue": 0, "green": 100}


# -- logs ------------------------------------------------------------------------------------------
def test_logs_show_the_slot_history_and_the_calls_it_failed(server, driver, cli, tmp_path):
    first, _ = two_versions(tmp_path, cli)
    assert cli("traffic", first, "blue=50", "green=50").exit_code == 0
    # version 2's payload unpickles into something that cannot predict: its rows fail
    import pickle

    for row in server.db.tables["dbo.tdsp_models"]:
        if row["version"] == "2":
            row["payload"] = pickle.dumps({"not": "a model"})
    body = json.dumps({"columns": FEATURES, "data": random_rows(50)}).encode()
    answer = backend_for(first, server).invoke(body)
    assert answer.status == 200  # blue's rows still answered; green's are NULL

    shown = cli("logs", first, "--deployment", "green")

    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    assert "green: pushed iris-classifier:2 (sha256 " in text and "by deployer" in text
    assert "error:" in text and "AttributeError" in text and "failed on version 2" in text
    assert text.rstrip().endswith("now green: iris-classifier:2, 50% of traffic")
    blue = cli("logs", first, "--deployment", "blue", "--json").json()
    assert not any("error:" in line for line in blue["lines"])
    assert any("pushed iris-classifier:1" in line for line in blue["lines"])


# -- --force ---------------------------------------------------------------------------------------
def test_a_library_mismatch_is_refused_and_deployed_with_force_and_a_warning(server, driver, cli, tmp_path):
    manifest = make_project(tmp_path / "p")
    server.libraries["scikit-learn"] = "0.24.2"

    refused = cli("push", manifest)

    assert refused.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert "scikit-learn" in refused.stderr and "--force" in refused.stderr
    assert server.db.tables == {} and server.db.procedures == {}

    forced = cli("push", manifest, "--force", "--json")

    assert forced.exit_code == 0, forced.stderr
    assert "warning: --force: deploying although scikit-learn" in forced.stderr
    assert "0.24.2 on the server" in forced.stderr
    assert forced.json()["smoke"]["passed"] is True


# -- CSV requests ----------------------------------------------------------------------------------
def test_a_csv_smoke_request_is_scored_and_compared_with_the_json_table(server, driver, cli, tmp_path):
    manifest = make_project(tmp_path / "p")
    folder = manifest.parent
    rows = json.loads((folder / "request.json").read_text())
    # columns in another order than the inputs, as a spreadsheet may give them
    order = list(reversed(FEATURES))
    lines = [",".join(order)]
    lines += [
        ",".join(str(dict(zip(FEATURES, row, strict=True))[name]) for name in order) for row in rows["data"]
    ]
    (folder / "request.csv").write_text("\n".join(lines) + "\n")
    document = yaml.safe_load(manifest.read_text())
    document["smoke_test"]["request"] = "request.csv"
    manifest.write_text(yaml.safe_dump(document))

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == 0, pushed.stderr
    smoke = pushed.json()["smoke"]
    assert smoke["passed"] and smoke["answer"]["response"] == json.loads(
        (folder / "expected.json").read_text()
    )
    bad = backend_for(manifest, server).invoke(
        b"petal_width,petal_length,sepal_width,sepal_length\nx,1,2,3\n"
    )
    assert bad.status == 400 and "not a number" in bad.json()["error"]
