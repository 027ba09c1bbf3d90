"""Opt-in: scikit-learn iris models pushed to a real dedicated SQL pool, scored by PREDICT, split
between two versions by key (each row's version checked against the local twin's routing, which
proves that HASHBYTES and CONVERT give the keys and buckets the twin computes), deleted.

Runs only when TDSP_SYNAPSE_SQL_SERVER (e.g. myworkspace.sql.azuresynapse.net) and
TDSP_SYNAPSE_SQL_DATABASE (the pool) are set, and a driver (mssql-python, or pyodbc with
Microsoft's ODBC driver) is installed. Authentication: Entra (DefaultAzureCredential) unless
TDSP_SYNAPSE_SQL_USER is set, then SQL authentication with the password in
TDSP_SYNAPSE_SQL_PASSWORD. The endpoint gets a random name; its procedure and rows are deleted
at the end, whatever happened. The pool must be running (a paused pool refuses connections).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import yaml

REQUIRED = ("TDSP_SYNAPSE_SQL_SERVER", "TDSP_SYNAPSE_SQL_DATABASE")

pytestmark = [
    pytest.mark.skipif(
        not all(os.environ.get(name) for name in REQUIRED),
        reason=f"live dedicated SQL pool test: set {', '.join(REQUIRED)} to run it",
    ),
    pytest.mark.timeout(1800),
]


def live_project(root: Path, name: str, **options: object) -> Path:
    from tests.fakes.synapse_sql_project import make_project

    user = os.environ.get("TDSP_SYNAPSE_SQL_USER")
    auth = (
        {"method": "sql", "username": user, "password_env": "TDSP_SYNAPSE_SQL_PASSWORD"}
        if user
        else {"method": "entra"}
    )
    project = make_project(
        root,
        server=os.environ["TDSP_SYNAPSE_SQL_SERVER"],
        database=os.environ["TDSP_SYNAPSE_SQL_DATABASE"],
        auth=auth,
        **options,
    )
    doc = yaml.safe_load(project.read_text())
    doc["name"] = name
    doc["smoke_test"]["tolerance"] = 1e-5
    doc["smoke_test"]["latency"] = {"requests": 4, "concurrency": 1, "warmup": 1, "p95_ms": 60000}
    project.write_text(yaml.safe_dump(doc))
    return project


def test_push_split_score_and_delete_on_a_real_pool(tmp_path: Path):
    import json

    import numpy as np

    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.backends.synapse import make_backend
    from tdsp_deploy.backends.synapse.sql_predict_local import split_rows
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest import load_manifest
    from tdsp_deploy.pipeline import push
    from tests.fakes.synapse_sql_project import FEATURES

    name = "tdsplive" + secrets.token_hex(3)
    first = load_manifest(
        live_project(tmp_path / "v1", name, version="1"), targets=(LocalTarget, SynapseTarget)
    )
    second = load_manifest(
        live_project(tmp_path / "v2", name, version="2", max_depth=1), targets=(LocalTarget, SynapseTarget)
    )
    backend = make_backend(first.manifest)
    try:
        result = push(first, backend)
        assert result.smoke is not None and result.smoke.passed
        assert backend.status().slots[0].state == "healthy"
        assert push(second, make_backend(second.manifest)).deployment == "green"

        backend.set_traffic({"blue": 70, "green": 30})
        rows = (
            np.random.default_rng(5).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(400, 4)).round(2).tolist()
        )
        answer = backend.invoke(json.dumps({"columns": FEATURES, "data": rows}).encode())
        assert answer.status == 200, answer.body
        versions = [row[-1] for row in answer.json()["data"]]
        twin = split_rows(rows, first.manifest.target.inputs, {"blue": 70, "green": 30})
        assert versions == ["1" if slot == "blue" else "2" for slot in twin]
        records = [r for r in backend.request_records(0.0) if not r["pinned"]]
        assert len(records) >= len(rows)
        assert "now green" in backend.logs("green")
    finally:
        if backend.status().exists:
            backend.delete()
    assert not backend.status().exists
