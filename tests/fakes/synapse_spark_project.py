"""A Synapse spark-mode project (a pickled scikit-learn classifier, its scoring script, its manifest),
input rows and the scores expected of them, for the synapse tests and bench/spark_batch.py."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tdsp_deploy.backends.synapse.target import SynapseTarget  # noqa: E402
from tdsp_deploy.manifest import load_manifest  # noqa: E402

FEATURES = ["f0", "f1", "f2", "f3"]
OUTPUTS = [("label", "bigint"), ("p0", "float"), ("p1", "float"), ("p2", "float")]
STORAGE = "abfss://tdsp@contosolake.dfs.core.windows.net/deploy"
SCORE_PY = """\
import json, os, pickle

def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.pkl"), "rb") as f:
        model = pickle.load(f)

def run(raw_data):
    return model.predict(json.loads(raw_data)["data"]).tolist()
"""


BATCH_PREDICT_PY = (
    SCORE_PY
    + """
def predict(model, df):
    # batch scoring: the label and a fixed score, to tell this path from the built-in one
    import pandas
    return pandas.DataFrame({"label": model.predict(df), "p0": 0.25, "p1": 0.5, "p2": 0.25})
"""
)


# -- a project: a model, its scoring script, a synapse manifest -----------------------------------
def train(seed: int, rows: int = 300) -> Any:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    y = (x[:, 0] + seed * x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    return LogisticRegression(max_iter=500).fit(pd.DataFrame(x, columns=FEATURES), y)


def make_project(
    folder: Path,
    *,
    seed: int = 1,
    score_py: str = SCORE_PY,
    target: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """A project with a pickled scikit-learn classifier and a spark-mode manifest; its path."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "model.pkl").write_bytes(pickle.dumps(train(seed)))
    (folder / "score.py").write_text(score_py)
    manifest = {
        "name": "churn",
        "model": {"path": "model/model.pkl", "flavor": "sklearn"},
        "scoring": {"script": "score.py"},
        "target": {
            "kind": "synapse",
            "workspace": "contoso-ws",
            "mode": "spark",
            "spark_pool": "pool1",
            "storage": STORAGE,
            "inputs": [{"name": f, "type": "float"} for f in FEATURES],
            "outputs": [{"name": n, "type": t} for n, t in OUTPUTS],
            "key_column": "customer_id",
            **(target or {}),
        },
        **extra,
    }
    path = folder / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def rows(count: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(count, len(FEATURES))), columns=FEATURES)
    frame.insert(0, "customer_id", np.arange(count, dtype=np.int64) * 7 + 3)
    frame["region"] = np.where(np.arange(count) % 2 == 0, "north", "south")
    return frame


def load(path: Path) -> Any:
    return load_manifest(path, targets=(SynapseTarget,))


def expected_scores(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    features = frame[FEATURES].astype("float64")
    proba = model.predict_proba(features)
    return pd.DataFrame(
        {
            "label": model.predict(features).astype("int64"),
            # the outputs are declared `float` (Spark double)
            **{f"p{i}": proba[:, i] for i in range(3)},
        }
    )
