"""A SQL Server project (the iris classifier, its manifest, its expected answer) and the backend built
on tests/fakes/sqlserver_fake.py, shared by the sqlserver and rollout tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import yaml

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.sqlserver import SqlServerBackend
from tdsp_deploy.backends.sqlserver.target import SqlServerTarget
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.packaging.libraries import installed_version
from tdsp_deploy.pipeline import PushResult, push
from tests.fakes.sqlserver_fake import FakeSqlServer

NAME = "irissql"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
TABLE = "dbo.tdsp_models"
PROCEDURE = f"dbo.score_{NAME}"


# -- the project -------------------------------------------------------------------------------
def train(max_depth: int = 3) -> Any:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    labels = iris.target_names[iris.target]
    features = pd.DataFrame(iris.data, columns=FEATURES)
    return DecisionTreeClassifier(max_depth=max_depth, random_state=0).fit(features, labels)


def expected_answer(model: Any, version: str) -> dict[str, Any]:
    import pandas as pd

    species = model.predict(pd.DataFrame(SAMPLES, columns=FEATURES))
    return {"columns": ["species", "model_version"], "data": [[str(s), version] for s in species]}


def make_project(root: Path, *, version: str = "1", max_depth: int = 3) -> Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    model = train(max_depth)
    (root / "model" / "model.pkl").write_bytes(pickle.dumps(model))
    (root / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n")
    (root / "requirements.txt").write_text("scikit-learn\nnumpy\npandas\n")
    (root / "request.json").write_text(json.dumps({"columns": FEATURES, "data": SAMPLES}))
    (root / "expected.json").write_text(json.dumps(expected_answer(model, version)))
    manifest = {
        "name": NAME,
        "model": {
            "path": "model/model.pkl",
            "name": "iris-classifier",
            "version": version,
            "flavor": "sklearn",
        },
        "scoring": {"script": "score.py"},
        "environment": {"requirements": "requirements.txt"},
        "target": {
            "kind": "sqlserver",
            "server": "sql.example.test",
            "database": "scoring",
            "auth": {"method": "sql", "username": "deployer", "password_env": "TDSP_TEST_SQL_PASSWORD"},
            "inputs": [{"name": name, "type": "float"} for name in FEATURES],
            "outputs": [{"name": "species", "type": "nvarchar(32)"}],
        },
        "smoke_test": {
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 6, "concurrency": 2, "warmup": 1},
        },
    }
    path = root / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def matching_libraries() -> dict[str, str]:
    return {name: installed_version(name) or "" for name in ("scikit-learn", "numpy")}


def backend_for(manifest: Path, server: FakeSqlServer, **options: Any) -> SqlServerBackend:
    loaded = load_manifest(manifest, targets=(LocalTarget, SqlServerTarget))
    return SqlServerBackend(loaded.manifest, connection=server.connect(), **options)


def run_push(manifest: Path, server: FakeSqlServer, **options: Any) -> PushResult:
    loaded = load_manifest(manifest, targets=(LocalTarget, SqlServerTarget))
    backend = SqlServerBackend(loaded.manifest, connection=server.connect(), **options)
    return push(loaded, backend)
