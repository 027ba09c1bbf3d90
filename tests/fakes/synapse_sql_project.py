"""A Synapse sql-mode project (the iris classifier, its manifest, its expected answer) and the backend
built on tests/fakes/synapse_sql_fake.py, shared by the synapse sql tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.backends.synapse.sql_pool import SqlPoolBackend
from tdsp_deploy.backends.synapse.target import SynapseTarget
from tdsp_deploy.errors import TdspError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.pipeline import PushResult, push
from tests.fakes.synapse_sql_fake import FakeSqlPool

NAME = "irispool"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
TABLE = "dbo.tdsp_models"
PROCEDURE = f"dbo.score_{NAME}"


def train(max_depth: int | None = None) -> Any:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    features = pd.DataFrame(iris.data, columns=FEATURES)
    labels = iris.target_names[iris.target]
    if max_depth is None:
        return LogisticRegression(max_iter=1000, random_state=0).fit(features, labels)
    return DecisionTreeClassifier(max_depth=max_depth, random_state=0).fit(features, labels)


def expected_answer(model: Any, version: str) -> dict[str, Any]:
    import pandas as pd

    frame = pd.DataFrame(SAMPLES, columns=FEATURES)
    species, proba = model.predict(frame), model.predict_proba(frame)
    data = [[str(s), *map(float, p), version] for s, p in zip(species, proba, strict=True)]
    return {"columns": ["species", *(f"p_{c}" for c in CLASSES), "model_version"], "data": data}


def make_project(root: Path, *, version: str = "1", max_depth: int | None = None, **target: Any) -> Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    model = train(max_depth)
    (root / "model" / "model.pkl").write_bytes(pickle.dumps(model))
    (root / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n")
    (root / "requirements.txt").write_text("scikit-learn\nonnxruntime\n")
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
            "kind": "synapse",
            "workspace": "contoso-ml",
            "mode": "sql",
            "server": "contoso-ml.sql.azuresynapse.net",
            "database": "scoring",
            "auth": {"method": "sql", "username": "deployer", "password_env": "TDSP_TEST_POOL_PASSWORD"},
            "inputs": [{"name": n, "type": "float"} for n in FEATURES],
            "outputs": [{"name": "species", "type": "nvarchar(16)"}]
            + [{"name": f"p_{c}", "type": "float"} for c in CLASSES],
            **target,
        },
        "smoke_test": {
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 4, "concurrency": 2, "warmup": 1},
        },
    }
    path = root / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def backend_for(manifest: Path, pool: FakeSqlPool) -> SqlPoolBackend:
    loaded = load_manifest(manifest, targets=(LocalTarget, SynapseTarget))
    return SqlPoolBackend(loaded.manifest, connection=pool.connect())


def run_push(manifest: Path, pool: FakeSqlPool) -> PushResult:
    loaded = load_manifest(manifest, targets=(LocalTarget, SynapseTarget))
    return push(loaded, SqlPoolBackend(loaded.manifest, connection=pool.connect()))


def push_fails(manifest: Path, pool: FakeSqlPool) -> TdspError:
    with pytest.raises(TdspError) as caught:
        run_push(manifest, pool)
    return caught.value
