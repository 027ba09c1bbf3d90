"""Opt-in: a scikit-learn iris model pushed to a real dedicated SQL pool, scored by PREDICT, deleted.

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


def test_push_score_and_delete_on_a_real_pool(tmp_path: Path):
    from test_synapse_sql_backend import make_project

    from tdsp_deploy.backends.synapse import SynapseBackend
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest import LocalTarget, load_manifest
    from tdsp_deploy.pipeline import push

    name = "tdsplive" + secrets.token_hex(3)
    user = os.environ.get("TDSP_SYNAPSE_SQL_USER")
    auth = (
        {"method": "sql", "username": user, "password_env": "TDSP_SYNAPSE_SQL_PASSWORD"}
        if user
        else {"method": "entra"}
    )
    project = make_project(
        tmp_path / name,
        server=os.environ["TDSP_SYNAPSE_SQL_SERVER"],
        database=os.environ["TDSP_SYNAPSE_SQL_DATABASE"],
        auth=auth,
    )
    doc = yaml.safe_load(project.read_text())
    doc["name"] = name
    doc["smoke_test"]["tolerance"] = 1e-5
    doc["smoke_test"]["latency"] = {"requests": 4, "concurrency": 1, "warmup": 1, "p95_ms": 60000}
    project.write_text(yaml.safe_dump(doc))
    loaded = load_manifest(project, targets=(LocalTarget, SynapseTarget))
    backend = SynapseBackend(loaded.manifest)
    try:
        result = push(loaded, backend)
        assert result.smoke is not None and result.smoke.passed
        assert backend.status().slots[0].state == "healthy"
    finally:
        if backend.status().exists:
            backend.delete()
    assert not backend.status().exists
