"""Scoring script in the Azure ML entry-script contract: init() runs once, run(raw_data) per request.

The server sets AZUREML_MODEL_DIR to a folder that holds your model under its own name: the
manifest's `model.path: model/` is found at $AZUREML_MODEL_DIR/model/. This starter needs no
libraries: its "model" is a linear model stored as JSON (model/model.json). Replace it with yours.

Request:  {"data": [[x1, x2, x3], ...]}
Response: {"predictions": [y, ...]}     with y = bias + sum(weight_i * x_i)
Raise ValueError on a bad request: the server answers 500 and logs your message.
"""

import json
import os

model = None  # loaded once by init(), used by every run()


def init():
    global model
    model_dir = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model")
    with open(os.path.join(model_dir, "model.json"), encoding="utf-8") as f:
        model = json.load(f)

    # A real model loads here instead, once, e.g. (add the package to requirements.txt):
    #   import joblib
    #   model = joblib.load(os.path.join(model_dir, "model.pkl"))
    # or with ONNX (onnxruntime), which does not depend on the training library's version:
    #   import onnxruntime
    #   model = onnxruntime.InferenceSession(os.path.join(model_dir, "model.onnx"))


def run(raw_data):
    try:
        rows = json.loads(raw_data)["data"]
    except (ValueError, KeyError, TypeError):
        raise ValueError('the request must be JSON like {"data": [[x1, x2, ...], ...]}') from None
    if not isinstance(rows, list):
        raise ValueError('"data" must be a list of rows')

    weights, bias = model["weights"], model["bias"]
    predictions = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(weights):
            raise ValueError(f"each row must be a list of {len(weights)} numbers, got {row!r}")
        try:
            predictions.append(bias + sum(w * float(x) for w, x in zip(weights, row)))
        except (ValueError, TypeError):
            raise ValueError(f"each row must hold numbers only, got {row!r}") from None
    # With a real model: predictions = model.predict(rows).tolist()  (anything JSON can encode)
    return {"predictions": predictions}
