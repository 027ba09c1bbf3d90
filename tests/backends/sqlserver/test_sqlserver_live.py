"""The iris example on SQL Server: tests/data/manifests/sqlserver-iris/deploy.yaml beside a copy of
examples/iris's model and code.

``test_the_live_manifest_scores_against_the_fake_server`` always runs: the same manifest, the
real push through the CLI, against tests/fakes/sqlserver_fake.py (the example's ONNX model scored by
the generated Python in the harness). The live test runs only when ``TDSP_TEST_MSSQL`` holds an
ODBC connection string to a SQL Server with Machine Learning Services (Python) and external
scripts enabled, e.g.

    export TDSP_TEST_MSSQL='Server=tcp:localhost,1433;Database=tdsp_test;UID=sa;PWD=...'
    pytest tests/backends/sqlserver/test_sqlserver_live.py

(the README's "The SQL Server target" says how to start one). It needs the driver
(``pip install 'tdsp-deploy[sqlserver]'``) and onnxruntime in the server's Python. It pushes
the example, scores it, pushes a second version, rolls traffic back to the first, and deletes
the endpoint and its rows, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import paths

ROOT = paths.ROOT
EXAMPLE = ROOT / "examples" / "iris"
MANIFEST = paths.DATA / "manifests" / "sqlserver-iris"
LIVE = os.environ.get("TDSP_TEST_MSSQL", "")


def iris_on_sqlserver(root: Path) -> Path:
    """The tabular manifest beside a copy of the example's model and code."""
    project = root / "iris-sql"
    shutil.copytree(MANIFEST, project)
    shutil.copytree(EXAMPLE / "model", project / "model")
    shutil.copytree(EXAMPLE / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return project / "deploy.yaml"


def connection_parts(text: str) -> dict[str, str]:
    """``Server=tcp:host,port;Database=...;UID=...;PWD=...`` as the manifest's variables."""
    parts = {}
    for item in re.findall(r"([^=;]+)=(\{(?:[^}]|\}\})*\}|[^;]*)", text):
        key, value = item[0].strip().lower(), item[1].strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].replace("}}", "}")
        parts[key] = value
    server = parts.get("server", "localhost").removeprefix("tcp:")
    host, _, port = server.partition(",")
    return {
        "TDSP_TEST_MSSQL_SERVER": host,
        "TDSP_TEST_MSSQL_PORT": port or "1433",
        "TDSP_TEST_MSSQL_DATABASE": parts.get("database", "tdsp_test"),
        "TDSP_TEST_MSSQL_USER": parts.get("uid", parts.get("user id", "sa")),
        "TDSP_TEST_MSSQL_PASSWORD": parts.get("pwd", parts.get("password", "")),
    }


def test_connection_parts():
    parts = connection_parts("Server=tcp:db.example.test,14330;Database=scoring;UID=tester;PWD={p;w}};x};")
    assert parts == {
        "TDSP_TEST_MSSQL_SERVER": "db.example.test",
        "TDSP_TEST_MSSQL_PORT": "14330",
        "TDSP_TEST_MSSQL_DATABASE": "scoring",
        "TDSP_TEST_MSSQL_USER": "tester",
        "TDSP_TEST_MSSQL_PASSWORD": "p;w};x",
    }


def test_the_live_manifest_scores_against_the_fake_server(tmp_path, monkeypatch, cli):
    from tests.fakes.dbapi_fake import install_driver
    from tests.fakes.sqlserver_fake import FakeSqlServer

    server = FakeSqlServer()
    install_driver(monkeypatch, server.connect, "TDSP_TEST_MSSQL_PASSWORD")
    manifest = iris_on_sqlserver(tmp_path)

    pushed = cli("push", manifest, "--json")

    assert pushed.exit_code == 0, pushed.stderr
    assert pushed.json()["smoke"]["passed"] is True
    rendered = cli("render", manifest, "-o", tmp_path / "out", "--json")
    assert rendered.exit_code == 0, rendered.stderr
    assert (tmp_path / "out" / "model.bin").read_bytes() == (EXAMPLE / "model" / "model.onnx").read_bytes()


@pytest.mark.skipif(not LIVE, reason="live SQL Server test: set TDSP_TEST_MSSQL to an ODBC connection string")
@pytest.mark.timeout(1800)
def test_push_score_roll_back_and_delete_on_a_live_server(tmp_path, monkeypatch, cli):
    pytest.importorskip("mssql_python", reason="pip install 'tdsp-deploy[sqlserver]'")
    suffix = secrets.token_hex(3)
    for name, value in connection_parts(LIVE).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TDSP_TEST_MSSQL_ENDPOINT", f"iris-live-{suffix}")
    monkeypatch.setenv("TDSP_TEST_MSSQL_MODEL", f"iris-live-{suffix}")
    first = iris_on_sqlserver(tmp_path / "v1")
    second = iris_on_sqlserver(tmp_path / "v2")
    document = yaml.safe_load(second.read_text())
    document["model"]["version"] = "2"
    second.write_text(yaml.safe_dump(document))
    expected = json.loads((first.parent / "expected.json").read_text())
    answer_of_two = {**expected, "data": [[*row[:-1], "2"] for row in expected["data"]]}
    (second.parent / "expected.json").write_text(json.dumps(answer_of_two))
    try:
        pushed = cli("push", first, "--json")
        assert pushed.exit_code == 0, pushed.stderr
        assert pushed.json()["smoke"]["passed"] is True

        answer = _invoke(cli, first)
        assert [row[0] for row in answer["data"]] == [row[0] for row in expected["data"]]

        again = cli("push", second, "--json")  # the same model as version 2, on green
        assert again.exit_code == 0, again.stderr
        assert again.json()["traffic"] == {"blue": 0, "green": 100}
        assert {row[-1] for row in _invoke(cli, first)["data"]} == {"2"}

        back = cli("rollback", first, "--json")
        assert back.exit_code == 0, back.stderr
        assert {row[-1] for row in _invoke(cli, first)["data"]} == {"1"}
        logs = cli("logs", first, "--deployment", "blue")
        assert logs.exit_code == 0 and "pushed" in logs.stdout
    finally:
        deleted = cli("delete", first, "--yes", "--json")
        assert deleted.exit_code == 0, deleted.stderr
    assert cli("status", first, "--json").exit_code == 3


def _invoke(cli: Any, manifest: Path) -> Any:
    called = cli("invoke", manifest, "--request", manifest.parent / "request.csv", "--json")
    assert called.exit_code == 0, called.stderr
    return called.json()["response"]
