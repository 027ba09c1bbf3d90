"""Scoring script in the Azure ML entry-script contract: init() runs once, run(raw_data) per request.

The server sets AZUREML_MODEL_DIR to a folder that holds your model under its own name: the
manifest's `model.path: model/` is found at $AZUREML_MODEL_DIR/model/. The model is a
scikit-learn estimator saved with joblib (model/model.pkl). A pickle loads only with the
scikit-learn version that saved it: requirements.txt pins it. Replace the model with yours.

Request:  {"data": [[x1, x2, x3], ...]}
Response: {"predictions": [y, ...]}
Raise ValueError on a bad request: the server answers 500 and logs your message.
"""

import json
import os

import joblib
import numpy as np

model = None  # loaded once by init(), used by every run()


def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.pkl"))


def run(raw_data):
    try:
        rows = np.asarray(json.loads(raw_data)["data"], dtype=float)
    except (ValueError, KeyError, TypeError):
        raise ValueError('the request must be JSON like {"data": [[x1, x2, x3], ...]} with numbers') from None
    if rows.ndim != 2 or rows.shape[1] != model.n_features_in_:
        raise ValueError(f"each row must hold {model.n_features_in_} numbers")
    return {"predictions": [round(float(y), 6) for y in model.predict(rows)]}
