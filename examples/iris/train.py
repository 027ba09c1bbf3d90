"""Train the iris example: a logistic regression, exported to ONNX.

    python examples/iris/train.py        (needs scikit-learn, skl2onnx, onnxruntime)

Writes model/model.onnx and expected-response.json (sample-request.json scored by src/score.py,
the script the server runs, so the two always agree). Both files are committed: serving the
model needs only onnxruntime and numpy, whatever scikit-learn version is installed.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
SEED = 0
# Opsets old enough for onnxruntime >= 1.17 (requirements.txt) to load the file.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def train():
    iris = load_iris()
    # Train on the class names, so that the ONNX label output is the name itself.
    X, y = iris.data.astype(np.float32), iris.target_names[iris.target]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=SEED)
    clf = LogisticRegression(max_iter=1000, random_state=SEED).fit(X_train, y_train)
    print(f"held-out accuracy: {clf.score(X_test, y_test):.3f} on {len(y_test)} flowers")
    return clf, X_train


def export(clf, X_train):
    # zipmap off: outputs are a label tensor and a probability matrix, not a list of dicts.
    onx = to_onnx(clf, X_train[:1], options={"zipmap": False}, target_opset=TARGET_OPSET)
    onx.doc_string = "iris classifier (tdsp-deploy example); see train.py"
    # skl2onnx lists the default domain twice when given a target_opset dict; keep one of each.
    opsets = {op.domain: op.version for op in onx.opset_import}
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    onnx.checker.check_model(onx, full_check=True)
    path = HERE / "model" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    print(f"wrote {path.relative_to(HERE)} ({path.stat().st_size} bytes, ir_version {onx.ir_version})")


def write_expected_response():
    # Import src/score.py exactly as the inference server would, and score the sample request.
    os.environ["AZUREML_MODEL_DIR"] = str(HERE)
    spec = importlib.util.spec_from_file_location("score", HERE / "src" / "score.py")
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    response = score.run((HERE / "sample-request.json").read_text())
    path = HERE / "expected-response.json"
    # One line per field: small enough to read in a diff.
    fields = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in response.items())
    path.write_text("{\n" + fields + "\n}\n")
    print(f"wrote {path.relative_to(HERE)}: {response['predictions']}")


if __name__ == "__main__":
    clf, X_train = train()
    export(clf, X_train)
    write_expected_response()
