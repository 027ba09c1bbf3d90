"""Scoring script in the Azure ML entry-script contract: init() runs once, run(raw_data) per request.

The server sets AZUREML_MODEL_DIR to a folder that holds your model under its own name: the
manifest's `model.path: model/` is found at $AZUREML_MODEL_DIR/model/. The model is ONNX
(model/model.onnx, a linear model of three inputs), run with onnxruntime: an ONNX file does not
depend on the version of the library that trained it. Replace it with yours.

Request:  {"data": [[x1, x2, x3], ...]}
Response: {"predictions": [y, ...]}
Raise ValueError on a bad request: the server answers 500 and logs your message.
"""

import json
import os

import numpy as np
import onnxruntime

session = None  # loaded once by init(), used by every run()


def init():
    global session
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(raw_data):
    try:
        rows = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    except (ValueError, KeyError, TypeError):
        raise ValueError('the request must be JSON like {"data": [[x1, x2, x3], ...]} with numbers') from None
    expected = session.get_inputs()[0]
    if rows.ndim != 2 or rows.shape[1] != expected.shape[1]:
        raise ValueError(f"each row must hold {expected.shape[1]} numbers")
    (outputs,) = session.run(None, {expected.name: rows})
    return {"predictions": [round(float(y), 6) for y in outputs[:, 0]]}
